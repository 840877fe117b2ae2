"""Metrics against a matrix computed by hand."""

import math

import numpy as np
import pytest

from pipeline.metrics import accuracy_matrix, session_accuracy, summarize

NAN = float("nan")
# after task 0: 0.9 on task 0; after task 1: 0.7, 0.8; after task 2: 0.6, 0.75, 0.9
R = np.array([[0.9, NAN, NAN], [0.7, 0.8, NAN], [0.6, 0.75, 0.9]])
COUNTS = [100, 50, 50]


def test_session_accuracy_by_hand():
    task_mean, weighted = session_accuracy(R, np.array(COUNTS, dtype=float))
    assert task_mean == pytest.approx([0.9, 0.75, 0.75])
    # (0.7*100 + 0.8*50) / 150 = 110/150; (60 + 37.5 + 45) / 200 = 142.5/200
    assert weighted == pytest.approx([0.9, 110 / 150, 142.5 / 200])


def test_summary_by_hand():
    m = summarize(R, COUNTS, learned_at=[0, 1, 2])
    assert m["final_acc_task_mean"] == pytest.approx(0.75)
    assert m["final_acc_sample_weighted"] == pytest.approx(0.7125)
    assert m["avg_acc_task_mean"] == pytest.approx((0.9 + 0.75 + 0.75) / 3)
    assert m["avg_acc_sample_weighted"] == pytest.approx((0.9 + 110 / 150 + 0.7125) / 3)
    # forgetting: task0 max(0.9, 0.7) - 0.6 = 0.3; task1 0.8 - 0.75 = 0.05
    assert m["forgetting"] == pytest.approx((0.3 + 0.05) / 2)
    # bwt: (0.6 - 0.9) + (0.75 - 0.8)
    assert m["bwt"] == pytest.approx((-0.3 - 0.05) / 2)


def test_single_session_has_no_forgetting():
    m = summarize(np.array([[0.8, 0.6]]), [10, 30], learned_at=[0, 0])
    assert m["final_acc_task_mean"] == pytest.approx(0.7)
    assert m["final_acc_sample_weighted"] == pytest.approx((8 + 18) / 40)
    assert math.isnan(m["forgetting"]) and math.isnan(m["bwt"])


def test_accuracy_matrix_frame():
    df = accuracy_matrix([{0: 0.9}, {0: 0.7, 1: 0.8}], 3)
    assert list(df.columns) == ["task_000", "task_001", "task_002"]
    assert df.shape == (2, 3) and math.isnan(df.iloc[0, 1]) and df.iloc[1, 1] == 0.8
