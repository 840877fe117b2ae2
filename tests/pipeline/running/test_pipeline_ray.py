"""A full pipeline run on a local Ray cluster with a sqlite MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import tiny_config_dict

from pipeline.config import config_from_dict
from pipeline.running.runner import execute, make_specs
from pipeline.running.state import RunDir

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_two_task_runs_on_ray_with_mlflow(tmp_path, tiny_checkpoint, ray_cluster):
    from mlflow import MlflowClient

    cfg = config_from_dict(
        tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2}, resources={"executor": "ray", "cpus_per_stage": 1})
    )
    outcomes = execute(make_specs(cfg, [0, 1]), progress=False)  # two seeds share the cluster
    assert [o.status for o in outcomes] == ["FINISHED", "FINISHED"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for outcome in outcomes:
        run = client.get_run(outcome.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["method.inflora.rank"] == "2" and run.data.params["method.name"] == "inflora"
        assert run.data.tags["seed"] == str(outcome.spec.seed) and run.data.tags["method"] == "inflora"
        assert len(run.data.tags["class_order"].split()) == 10
        assert "version.torch" in run.data.tags
        m = run.data.metrics
        for key in ("acc/test/task_000", "acc/test/task_001", "acc/test/task_mean", "acc/test/sample_weighted",
                    "acc/val/task_mean", "forgetting/test", "bwt/test", "memory/rank_mean", "interference/ratio",
                    "time/train_s", "final/final_acc_task_mean", "final/avg_acc_task_mean", "final/forgetting"):
            assert key in m, key
        import ray

        # one tag counts the stages per Ray node they ran on: here every stage on the one local node
        assert not [k for k in run.data.tags if k.startswith("node/")]
        assert json.loads(run.data.tags["nodes"]) == {ray.get_runtime_context().get_node_id(): 1 + 4 * 2}
        steps = sorted(x.step for x in client.get_metric_history(outcome.run_id, "acc/test/task_000"))
        assert steps == [0, 1]
        assert [x.step for x in client.get_metric_history(outcome.run_id, "acc/test/task_001")] == [1]
        artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
        assert {"config.yaml", "accuracy_matrix_test.csv", "accuracy_matrix_val.csv", "plots", "adapters", "run_dir"} <= artifacts
        plots = {a.path for a in client.list_artifacts(outcome.run_id, "plots")}
        assert plots == {"plots/accuracy_matrix.png", "plots/accuracy_curves.png"}
        # final metrics agree with the matrix in the run directory
        results = outcome.results()
        assert m["final/final_acc_task_mean"] == pytest.approx(np.nanmean(results.test.to_numpy()[-1]))
        # adapters hold branches and heads only, never the backbone
        from safetensors.torch import load_file

        adapter = load_file(str(RunDir(outcome.spec.run_dir).session_dir(1) / "adapter.safetensors"))
        assert adapter and all(k.startswith(("lora.", "head.")) for k in adapter)
    # the Ray run equals the in-process run
    local = config_from_dict(tiny_config_dict(tmp_path / "local", tiny_checkpoint, data={"num_tasks": 2}, tracking={"enabled": False}))
    (reference,) = execute(make_specs(local, [0]), progress=False)
    np.testing.assert_array_equal(reference.results().test.to_numpy(), outcomes[0].results().test.to_numpy())


def _wait_for_orphans(pgid: int, timeout: float = 30) -> None:
    """The killed driver's process group held its local Ray cluster; wait until it is gone."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.2)
    pytest.fail("processes of the killed run's Ray cluster survived")


@pytest.mark.slow
def test_cli_run_killed_under_ray_resumes(tmp_path, tiny_checkpoint):
    """SIGKILL of the `inflora run` driver (and its local Ray cluster) mid-stage, then the same command."""
    cfg = tiny_config_dict(tmp_path, tiny_checkpoint, resources={"executor": "ray", "cpus_per_stage": 1, "num_cpus": 2})
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    command = [sys.executable, "-m", "pipeline.cli", "run", str(path), "--no-progress"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    (spec,) = make_specs(config_from_dict(cfg))
    events = RunDir(spec.run_dir).file("events.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline:
        if events.exists() and '"stage": "session_001/train", "event": "start"' in events.read_text():
            break
        if proc.poll() is not None:
            pytest.fail(f"run ended before the kill: {proc.stdout.read().decode()[-2000:]}")
        time.sleep(0.05)
    else:
        pytest.fail("session 1 never started training")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    _wait_for_orphans(proc.pid)
    run_dir = RunDir(spec.run_dir)
    assert not run_dir.is_done(__import__("pipeline.running.state", fromlist=["StageKey"]).StageKey(2, "eval"))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "after_002" in done.stdout
    local = config_from_dict(tiny_config_dict(tmp_path / "local", tiny_checkpoint, tracking={"enabled": False}))
    (reference,) = execute(make_specs(local), progress=False)
    from pipeline.running.runner import spec_from_run_dir
    from pipeline.reporting.results import collect_results

    resumed = collect_results(run_dir, [[0], [1], [2]])
    np.testing.assert_array_equal(resumed.test.to_numpy(), reference.results().test.to_numpy())
    assert spec_from_run_dir(spec.run_dir).seed == 0
