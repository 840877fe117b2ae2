"""Smoke test of ``benchmarks/throughput.py``'s measuring functions on a tiny timm ViT (seconds)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = {"img_size": 8, "patch_size": 4, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("benchmarks_throughput", ROOT / "benchmarks" / "throughput.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


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
    rows = throughput.measure_case(case, cpu, repeats=1, clock=throughput.pick_clock(cpu)[0])
    assert [r["frozen_branches"] for r in rows] == [0, 2]
    for row in rows:
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert 0 < row["cov_share_E20"] < 0.5
    assert not any(key.startswith("merged") for row in rows for key in row)  # the prototype is gone
    shape = throughput.TaskShape(images=20, epochs=2, batch_size=8, classes=3, frozen=1, num_tasks=3, source="tiny")
    full = throughput.run_full_task(case, shape, cpu)
    assert 0 < full["cov_share_task"] < 1 and full["train_s"] > 0
    md = throughput.write_report(pd.DataFrame([*rows, full]), "cmd", cpu, "fp32", 1, "wall time", (0.0, 0.0), tmp_path)
    assert (tmp_path / "throughput.csv").is_file() and (tmp_path / "throughput.md").read_text() == md
    assert "MET" in md or "MISSED" in md
