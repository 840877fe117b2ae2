"""The CODA-Prompt demo sweep file: its space comes from the method's declared settings."""

from __future__ import annotations

from pathlib import Path

from sweeps.config import load_sweep

ROOT = Path(__file__).resolve().parents[2]


def test_coda_prompt_sweep_file_loads_over_the_methods_declared_settings():
    sweep = load_sweep(ROOT / "configs" / "sweep_coda_prompt.yaml")
    assert sweep.base.method.name == "coda_prompt"
    assert sweep.space.names == ["length", "pool_size"]
    assert {p.name: p.key for p in sweep.space.params} == {
        "length": "method.coda_prompt.length",
        "pool_size": "method.coda_prompt.pool_size",
    }
    assert sweep.config.enqueue == [{"length": 8, "pool_size": 50}]
    assert sweep.base.train.epochs == 5 and sweep.num_sessions == 5
