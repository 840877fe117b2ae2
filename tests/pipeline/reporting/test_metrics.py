"""Metrics against a matrix computed by hand."""

import math
import warnings

import numpy as np
import pytest

from pipeline.reporting.metrics import (
    accuracy,
    accuracy_matrix,
    old_new_accuracy,
    prediction_accuracies,
    resource_summary,
    session_accuracy,
    summarize,
    task_of_labels,
)
from pipeline.reporting.results import RunResults

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


# ----------------------------------------------------------------- the field's per-sample metrics
def test_task_of_labels_by_hand():
    # heads of 2, 3 and 1 classes hold labels 0-1, 2-4 and 5
    assert task_of_labels(np.array([0, 1, 2, 4, 5]), [2, 3, 1]).tolist() == [0, 0, 1, 1, 2]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\)"):
        task_of_labels(np.array([6]), [2, 3, 1])


def test_prediction_accuracies_by_hand():
    # heads [2, 3]: true tasks of labels [0, 1, 3, 4] are [0, 0, 1, 1]
    labels = np.array([0, 1, 3, 4])
    class_il = np.array([0, 2, 0, 4])  # right on samples 0 and 3
    task_il = np.array([0, 0, 3, 4])  # wrong on sample 1 only
    task_id = np.array([0, 1, 0, 1])  # right on samples 0 and 3
    acc = prediction_accuracies(labels, class_il, task_il, task_id, [2, 3])
    assert acc == {"class_il": 0.5, "task_il": 0.75, "task_id": 0.5}


def test_old_new_accuracy_by_hand():
    old, new = old_new_accuracy(R, COUNTS, learned_at=[0, 1, 2])
    assert math.isnan(old[0]) and new[0] == pytest.approx(0.9)
    assert (old[1], new[1]) == (pytest.approx(0.7), pytest.approx(0.8))
    # old after session 2: tasks 0 and 1, (0.6·100 + 0.75·50) / 150
    assert (old[2], new[2]) == (pytest.approx(97.5 / 150), pytest.approx(0.9))
    # two tasks in one session: both new
    old, new = old_new_accuracy(np.array([[0.5, 1.0]]), [10, 30], learned_at=[0, 0])
    assert math.isnan(old[0]) and new[0] == pytest.approx((5 + 30) / 40)


def test_resource_summary_by_hand():
    s = resource_summary([10, 20], [1.5, 2.5], [100.0, 300.0], [None, None])
    assert s == {"params/trainable_mean": 15.0, "params/trainable_max": 20.0, "time/task_mean_s": 2.0,
                 "time/total_s": 4.0, "memory/peak_rss_mb": 300.0}
    assert resource_summary([1], [1.0], [1.0], [50.0, 70.0])["memory/peak_cuda_mb"] == 70.0


def test_empty_splits_have_no_accuracy_and_no_warning():
    empty = np.full((2, 2), NAN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Mean of empty slice" would raise here
        assert math.isnan(accuracy(np.array([]), np.array([])))
        task_mean, weighted = session_accuracy(empty, np.array([3.0, 4.0]))
        assert np.isnan(task_mean).all() and np.isnan(weighted).all()
        assert np.isnan(old_new_accuracy(empty, [3, 4], [0, 1])[1]).all()
        results = RunResults(accuracy_matrix([{0: 0.5}, {0: 0.4, 1: 0.6}], 2), accuracy_matrix([{}, {}], 2), [3, 4], [0, 1])
        assert results.has("test") and not results.has("val")
        assert results.curves("val") == {} and results.summary("val") == {}
        assert results.curves("test")["task_mean"] == pytest.approx([0.5, 0.5])
        assert results.old_new()["old"][1] == pytest.approx(0.4) and results.old_new()["new"] == pytest.approx([0.5, 0.6])
        m = summarize(np.array([[NAN, NAN], [0.4, 0.6]]), [3, 4], learned_at=[0, 1])
        assert math.isnan(m["forgetting"])  # task 0 was never measured before the last session
