"""Finished outputs are checked before any reuse, and training stops at the first non-finite value."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_config_dict

from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.running.runner import RunFailed, execute, make_specs
from pipeline.running.state import RunDir, StageKey


@pytest.fixture
def finished(tmp_path, tiny_checkpoint):
    cfg = config_from_dict(tiny_config_dict(tmp_path, tiny_checkpoint, train={"epochs": 2}))
    (outcome,) = execute(make_specs(cfg), progress=False)
    return cfg, outcome


def _adapter_artifact(outcome, session: int) -> bytes:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=outcome.spec.config.tracking.uri)
    path = client.download_artifacts(outcome.run_id, f"adapters/session_{session:03d}/adapter.safetensors")
    with open(path, "rb") as fh:
        return fh.read()


def test_truncated_adapter_is_named_by_eval_and_recomputed_by_a_rerun_never_uploaded(finished, capsys):
    cfg, outcome = finished
    run_dir = RunDir(outcome.spec.run_dir)
    adapter = run_dir.session_dir(2) / "adapter.safetensors"
    good = adapter.read_bytes()
    uploaded = _adapter_artifact(outcome, 2)
    assert uploaded == good
    adapter.write_bytes(good[:100])
    # a reader that must not repair stops, naming the file and the command that recomputes it
    assert main(["eval", str(run_dir.path)]) == 2
    err = capsys.readouterr().err
    assert "session_002/adapter.safetensors" in err and "does not match its recorded checksum" in err and "inflora run --resume" in err
    # a re-run re-opens that stage and everything after it, and recomputes the same bytes
    (again,) = execute(make_specs(cfg), progress=False)
    assert again.status == "FINISHED"
    assert adapter.read_bytes() == good
    np.testing.assert_array_equal(again.results().test.to_numpy(), outcome.results().test.to_numpy())
    assert _adapter_artifact(outcome, 2) == good  # the 100-byte file never replaced the artifact


def test_edited_accuracy_in_a_marker_is_detected(finished, capsys):
    cfg, outcome = finished
    run_dir = RunDir(outcome.spec.run_dir)
    marker = run_dir.marker(StageKey(1, "eval"))
    body = json.loads(marker.read_text())
    body["eval"][0]["test"] = 0.999
    marker.write_text(json.dumps(body))
    assert main(["eval", str(run_dir.path)]) == 2
    assert "session_001/eval.done.json does not match its checksum" in capsys.readouterr().err
    (again,) = execute(make_specs(cfg), progress=False)  # the stage (and what follows) is run again
    np.testing.assert_array_equal(again.results().test.to_numpy(), outcome.results().test.to_numpy())


def test_non_finite_training_stops_unmarked_naming_task_epoch_step_and_lr(tmp_path, tiny_checkpoint):
    cfg = config_from_dict(tiny_config_dict(tmp_path, tiny_checkpoint, train={"lr": 1e30}, tracking={"enabled": False}))
    with pytest.raises(RunFailed) as info:
        execute(make_specs(cfg), progress=False)
    message = str(info.value)
    assert "NonFiniteTrainingError" in message and "train.session_000 (tasks [0])" in message
    assert "at epoch" in message and "step" in message and "lr 1e+30" in message
    (spec,) = make_specs(cfg)
    assert not RunDir(spec.run_dir).is_done(StageKey(0, "train"))
