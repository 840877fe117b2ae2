"""Every registered method through the real pipeline: the same smoke test for each (timm's
``test_models.py`` pattern, parametrised over the registry)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import tiny_config_dict

from model.methods import available_methods
from pipeline.config import config_from_dict
from pipeline.runner import execute, make_specs


@pytest.mark.parametrize("name", available_methods())
def test_every_method_runs_end_to_end_and_logs_like_inflora(tmp_path, tiny_checkpoint, name):
    from mlflow import MlflowClient

    cfg = config_from_dict(
        tiny_config_dict(tmp_path, tiny_checkpoint, method={"name": name}, data={"num_tasks": 2}, train={"epochs": 2})
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
