"""Every registered method through the real pipeline: the same smoke test for each (timm's
``test_models.py`` pattern, parametrised over the registry)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import tiny_config_dict

from model.methods import available_methods
from pipeline.config import config_from_dict
from pipeline.running.runner import execute, make_specs

# Settings that fit the tiny test ViT (2 blocks, width 32): the prompt methods' official
# layers and pool sizes, and CL-LoRA's block split, assume ViT-B's 12 blocks and width 768.
TINY = {
    "l2p": {"pool_size": 4, "length": 2, "top_k": 2, "layers": [0]},
    "dualprompt": {"pool_size": 3, "length": 2, "g_length": 2, "g_layers": [0], "e_layers": [1]},
    "coda_prompt": {"pool_size": 6, "length": 2, "layers": [0, 1]},
    "lora_minus": {"rank": 2},
    "cl_lora": {"rank": 2, "shared_blocks": [0], "specific_blocks": [1]},  # official 0-5 / 6-11
    "ranpac": {"projection_dim": 64, "rank": 2},
}


@pytest.mark.parametrize("name", available_methods())
def test_every_method_runs_end_to_end_and_logs_like_inflora(tmp_path, tiny_checkpoint, name):
    from mlflow import MlflowClient

    cfg = config_from_dict(
        tiny_config_dict(tmp_path, tiny_checkpoint, method={"name": name, name: TINY.get(name, {})}, data={"num_tasks": 2}, train={"epochs": 2})
    )
    (outcome,) = execute(make_specs(cfg), progress=False)
    assert outcome.status == "FINISHED"
    matrix = outcome.results().test.to_numpy()
    sessions = len(outcome.sessions)
    assert matrix.shape[0] == sessions and not np.isnan(matrix[-1]).any()
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["method"] == name
    assert len(client.get_metric_history(outcome.run_id, "acc/test/task_mean")) == sessions
    assert 0 <= run.data.metrics["final/final_acc_task_mean"] <= 1
    assert run.data.metrics["final/trainable_params_per_task"] > 0
    assert not math.isnan(run.data.metrics["acc_task_il/test/task_mean"])
