"""What the tracker adds around the metrics: the experiment's kind, stage nodes, system metrics."""

from __future__ import annotations

from model.methods import StepResult

import json

import pytest
from conftest import tiny_config_dict

from pipeline.tracking.store import browse_hint
from pipeline.config import TrackingConfig, config_from_dict
from pipeline.running.nodes import current_node_id
from pipeline.running.runner import execute, make_specs
from pipeline.running.state import RunDir, StageKey
from pipeline.tracking.metric_keys import FINAL_IMAGES as FINAL_IMAGE_KEYS
from pipeline.tracking.tracker import DESCRIPTION_TAG, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, RESULT_PLOTS, Tracker, log_stage_node


def test_experiments_are_model_training(tmp_path):
    """MLflow 3's UI shows the runs (not the GenAI traces view) of a custom_model_development experiment."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    created = Tracker(TrackingConfig(experiment="new", uri=uri))
    assert client.get_experiment(created.experiment_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development" == MODEL_TRAINING_KIND
    old = client.create_experiment("older")  # made before the tag existed: marked when reopened
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    Tracker(TrackingConfig(experiment="older", uri=uri))
    Tracker(TrackingConfig(experiment="chosen", uri=uri))
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"  # a user's choice stays


class _Client:
    def __init__(self):
        self.tags = {}

    def set_tag(self, run_id, key, value):
        self.tags[(run_id, key)] = value


def test_stage_node_is_a_tag_and_an_event(tmp_path):
    run_dir = RunDir(str(tmp_path))
    client = _Client()
    key = StageKey(2, "train")
    log_stage_node(client, "r1", run_dir, key, StepResult(node_id="abc123"))
    log_stage_node(client, "r1", run_dir, StageKey(2, "eval"), StepResult(node_id=None))  # in-process: no node
    log_stage_node(client, "r1", run_dir, StageKey(2, "update"), StepResult(node_id="def456"))
    log_stage_node(client, "r1", run_dir, key, StepResult(node_id="abc123"))  # ran again (a resume): counted once
    assert client.tags == {("r1", "nodes"): json.dumps({"abc123": 1, "def456": 1})}  # one tag, not one per stage
    line = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[0])
    assert (line["stage"], line["event"], line["node_id"]) == ("session_002/train", "node", "abc123")


def test_no_node_outside_ray(monkeypatch):
    """No node without Ray imported, nor with Ray imported but not initialised (whatever ran before)."""
    import sys
    from types import SimpleNamespace

    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert current_node_id() is None
    idle = SimpleNamespace(is_initialized=lambda: False, get_runtime_context=lambda: pytest.fail("asked an idle Ray for its node"))
    monkeypatch.setitem(sys.modules, "ray", idle)
    assert current_node_id() is None
    running = SimpleNamespace(is_initialized=lambda: True, get_runtime_context=lambda: SimpleNamespace(get_node_id=lambda: "n1"))
    monkeypatch.setitem(sys.modules, "ray", running)
    assert current_node_id() == "n1"


def test_system_metrics_per_run_and_after_resume(tmp_path, tiny_checkpoint, monkeypatch):
    """CPU and RAM samples of the machine land on the run as system/* metrics, steps 0, 1, ...;
    a resumed run continues the steps; the sampling interval is MLflow's variable."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    cfg = config_from_dict(tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2}))
    (outcome,) = execute(make_specs(cfg), progress=False)
    client = MlflowClient(tracking_uri=cfg.tracking.uri)

    def steps(key):
        return [m.step for m in client.get_metric_history(outcome.run_id, key)]

    metrics = client.get_run(outcome.run_id).data.metrics
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
    assert 0 < metrics["system/system_memory_usage_percentage"] <= 100 and metrics["system/system_memory_usage_megabytes"] > 0
    first = steps("system/cpu_utilization_percentage")
    assert first == list(range(len(first))) and len(first) >= 1
    # a finished run re-run logs nothing again, system metrics included
    (again,) = execute(make_specs(cfg), progress=False)
    assert again.run_id == outcome.run_id and steps("system/cpu_utilization_percentage") == first
    # an unfinished run resumed (its last evaluation lost) continues the steps
    run_dir = outcome.run_dir
    run_dir.unmark(StageKey(1, "eval"))
    state = run_dir.read_json("tracking.json")
    run_dir.write_json("tracking.json", {**state, "finished": False, "logged": [k for k in state["logged"] if k != "session_001/eval"]})
    (resumed,) = execute(make_specs(cfg), progress=False)
    assert resumed.run_id == outcome.run_id
    second = steps("system/cpu_utilization_percentage")
    assert second[: len(first)] == first and second == list(range(len(second))) and len(second) > len(first)


def test_system_metrics_can_be_switched_off(tmp_path, tiny_checkpoint, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    cfg = config_from_dict(tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2}))
    (outcome,) = execute(make_specs(cfg), progress=False)
    metrics = MlflowClient(tracking_uri=cfg.tracking.uri).get_run(outcome.run_id).data.metrics
    assert "final/final_acc_task_mean" in metrics and not [k for k in metrics if k.startswith("system/")]


def test_finished_run_shows_its_final_matrix_first(tmp_path, tiny_checkpoint):
    """The final matrix and curves: images logged once, at the last step (under "_final", the
    first section of "Model metrics"), and the run's description links both plots."""
    from mlflow import MlflowClient

    cfg = config_from_dict(tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2}))
    (outcome,) = execute(make_specs(cfg), progress=False)
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    images = [f.path for f in client.list_artifacts(outcome.run_id, "images") if f.path.endswith(".png")]
    for key in FINAL_IMAGE_KEYS.values():
        assert [p for p in images if p.startswith(f"images/{key.replace('/', '~')}+")] == [p for p in images if f"{key.replace('/', '~')}+step+1+" in p]
        assert len([p for p in images if key.replace("/", "~") in p]) == 1
    assert sorted(FINAL_IMAGE_KEYS.values())[0] < "acc"  # the UI's first section (localeCompare puts "_" first too)
    note = client.get_run(outcome.run_id).data.tags[DESCRIPTION_TAG]
    assert note.index("accuracy_matrix") < note.index("accuracy_curves")
    for plot in RESULT_PLOTS:
        assert f"get-artifact?path={plot.replace('/', '%2F')}&run_uuid={outcome.run_id}" in note
        assert client.list_artifacts(outcome.run_id, plot.split("/")[0])
    client.set_tag(outcome.run_id, DESCRIPTION_TAG, "my own notes")  # a user's description is kept
    run_dir = outcome.run_dir
    run_dir.write_json("tracking.json", {**run_dir.read_json("tracking.json"), "finished": False})
    execute(make_specs(cfg), progress=False)
    assert client.get_run(outcome.run_id).data.tags[DESCRIPTION_TAG] == "my own notes"


@pytest.mark.parametrize(("uri", "expected", "absent"), [
    ("http://mlflow:5000", "open http://127.0.0.1:5000", "backend-store-uri"),  # the compose stack's runner
    ("http://10.0.0.5:5000", "open http://10.0.0.5:5000", "backend-store-uri"),
    ("sqlite:////tmp/x/mlflow.db", "inflora ui", "open http"),
])
def test_browse_hint(uri, expected, absent):
    hint = browse_hint(uri)
    assert expected in hint and absent not in hint
