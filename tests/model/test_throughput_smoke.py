"""Smoke test of the throughput benchmark on a tiny timm ViT (seconds).

The measuring functions (``benchmarks/step_cost.py``) and the report (``benchmarks/throughput.py``).
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from benchmarks import step_cost as throughput_lib
from benchmarks import throughput as throughput_report
from benchmarks.harness import pick_clock, verdict

TINY = {"img_size": 8, "patch_size": 4, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture(scope="module")
def throughput():
    return throughput_lib


@pytest.fixture()
def case(throughput):
    return throughput.Case(
        "tiny", "vit_tiny_patch16_224", TINY, batch_size=8, rank=2, classes=3, steps=2, epochs=5, branches=(0, 2)
    )


def test_floor_backpropagates_to_the_first_qkv_output_only(throughput, case):
    backbone = throughput.build_backbone(case, torch.device("cpu"))
    floor = throughput.build_floor(backbone, case, 0, torch.device("cpu"))
    x = torch.rand(4, 1, 8, 8)
    floor.net(x, [floor.head]).sum().backward()
    assert floor.net.qkv_shift.grad is not None
    assert all(p.grad is None for p in backbone.parameters())
    assert sorted(id(p) for p in floor.params) == sorted(id(p) for p in floor.net.parameters() if p.requires_grad)


def test_step_covariance_and_full_task_measurements_run(throughput, case, tmp_path):
    cpu = torch.device("cpu")
    rows = throughput.measure_case(case, cpu, repeats=1, clock=pick_clock(cpu)[0])
    assert [r["frozen_branches"] for r in rows] == [0, 2]
    for row in rows:
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert 0 < row["cov_share_E20"] < 0.5
    assert not any(key.startswith("merged") for row in rows for key in row)  # the prototype is gone
    shape = throughput.TaskShape(images=20, epochs=2, batch_size=8, classes=3, frozen=1, num_tasks=3, source="tiny")
    full = throughput.run_full_task(case, shape, cpu)
    assert 0 < full["cov_share_task"] < 1 and full["train_s"] > 0
    md = throughput_report.write_report(pd.DataFrame([*rows, full]), "cmd", cpu, "fp32", 1, "wall time", (0.0, 0.0), tmp_path)
    assert (tmp_path / "throughput.csv").is_file() and (tmp_path / "throughput.md").read_text() == md
    head = rows[-1]  # no row with 5 frozen branches: the headline is the one with the most
    expected = verdict(head["ratio"], throughput.STEP_RATIO_TARGET, throughput.RATIO_NOISE)
    assert f"step ratio {head['ratio']:.3f} → **{expected}** (≤ {throughput.STEP_RATIO_TARGET})" in md


def test_verdict_reads_the_value_against_the_target():
    assert verdict(1.0, 1.15) == "MET" and verdict(1.3, 1.15) == "MISSED"
    assert verdict(1.17, 1.15, 0.05) == "MISSED (borderline)" and verdict(1.12, 1.15, 0.05) == "MET (borderline)"
