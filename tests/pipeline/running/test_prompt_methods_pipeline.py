"""Each prompt method runs end to end through the pipeline (local executor, no tracking)."""

from __future__ import annotations

import math

import pytest

SMALL = {
    "l2p": {"pool_size": 4, "length": 2, "top_k": 2, "layers": [0]},
    "dualprompt": {"pool_size": 3, "length": 2, "g_length": 2, "g_layers": [0], "e_layers": [1]},
    "coda_prompt": {"pool_size": 6, "length": 2, "layers": [0, 1]},
}


@pytest.mark.parametrize("name", list(SMALL))
def test_prompt_method_run_finishes_with_a_full_accuracy_matrix(tiny_config, name):
    from pipeline.running.runner import execute, make_specs

    cfg = tiny_config(method={"name": name, name: SMALL[name]}, train={"epochs": 1}, tracking={"enabled": False})
    (outcome,) = execute(make_specs(cfg), progress=False)
    assert outcome.status == "FINISHED", outcome.error
    test = outcome.results().test.to_numpy()
    assert test.shape == (3, 3)
    for s in range(3):
        for t in range(3):
            if t <= s:
                assert 0.0 <= test[s, t] <= 1.0, (s, t)
            else:
                assert math.isnan(test[s, t]), (s, t)
