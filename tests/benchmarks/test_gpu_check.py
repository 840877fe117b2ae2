"""``benchmarks/gpu_check.sh --cpu-smoke``: the GPU check's script runs end to end on the CPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu_smoke_writes_its_report(tmp_path):
    out = tmp_path / "gpu_check.md"
    committed = ROOT / "benchmarks" / "results" / "gpu_check.md"
    before = committed.read_bytes() if committed.exists() else None
    env = {**os.environ, "PYTHON": sys.executable, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--out", str(out), "--workdir", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = out.read_text()
    assert "CPU smoke" in report
    step_rows = re.findall(r"^\| (timm floor[^|]*|InfLoRA step, eager) \| ([0-9.]+) \| ([0-9.]+) \|", report, re.M)
    assert [r[0] for r in step_rows] == ["timm floor (frozen backbone fwd+bwd)", "InfLoRA step, eager"]
    assert all(float(r[1]) > 0 for r in step_rows) and float(step_rows[0][2]) == 1.0
    stage_rows = re.findall(r"^\| 0 \| ([12]) \| ([0-9.]+) \| cpu \| [^|]+ \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|", report, re.M)
    assert [r[0] for r in stage_rows] == ["1", "2"]  # one run, then two runs, every stage on the CPU
    for _, wall, per_task, images_per_s, projected in stage_rows:
        assert float(per_task) == pytest.approx(float(wall) / 2, abs=0.06)  # 2 tasks
        assert float(images_per_s) > 0 and float(projected) > float(wall)  # 1 epoch stretched to 50
    after = committed.read_bytes() if committed.exists() else None
    assert after == before  # the smoke run writes where --out says, never over the committed results
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("tmp")] == []  # the synthetic data is removed
