"""The docker-compose stack on a real Docker engine: build, up, the demo, restarts, re-run, down.

The engine, the base images and the local override: ``stack_helpers``.

The stack comes up with ``up -d`` and no ``--scale``: the two workers are the
file's default. While the runner's demo is running, ``mlflow`` is restarted; the
run must still end with every per-task metric logged exactly once. Its stages
must have run on both workers (the ``nodes`` tag the pipeline logs);
only 127.0.0.1 may be published; no Ray node may fall back to /tmp for its
object store. ``up -d runner`` then re-runs the demo on the same cluster (two
workers still): every stage is skipped. ``down -v`` removes everything.

It takes minutes (a cold build about 5), so it runs in CI (``INFLORA_CI=1``,
where an engine that cannot start is a failure) or with ``INFLORA_STACK=1``.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from dataclasses import dataclass

import pandas as pd
import pytest
from stack_helpers import ROOT, Stack, docker_engine, free_port, mlflow_client, wait_for

pytestmark = pytest.mark.stack

PROJECT = "inflora-stack-test"
EXPERIMENT = "inflora-demo"
NUM_TASKS = 5


def _readme_summary() -> dict[str, float]:
    """configs/demo.yaml's summary as the README prints it (%), which the stack's runner must reproduce."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("summary (%): final_acc_task_mean") :].split("run directories:")[0]
    return {key: float(value) for key, value in re.findall(r"(final_acc_task_mean|avg_acc_task_mean|forgetting|bwt) (-?[0-9.]+)", block)}


README_SUMMARY = _readme_summary()
# the demo pretrains its backbone first: 72 s on 2 idle cores, 8+ min on 2 cores shared by five jobs
RUNNER_TIMEOUT_S = float(os.environ.get("INFLORA_STACK_RUNNER_TIMEOUT_S", 1200))
OBJECT_STORE_FALLBACK = "The object store is using"


def _demo_runs(client) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id]) if experiment else []


@dataclass
class FirstRun:
    stack: Stack
    exit_code: int
    restart_at_ms: int
    runner_log: str


@pytest.fixture(scope="module")
def first_run():
    """Build, ``up -d``, restart mlflow while the demo runs, wait for the runner; ``down -v`` at the end."""
    started = time.monotonic()
    with docker_engine() as env:
        port = free_port()
        stack = Stack({**env, "MLFLOW_PORT": str(port)}, port, PROJECT)
        stack.timings["engine_and_base_images_s"] = time.monotonic() - started
        stack.compose("down", "-v", "--remove-orphans", check=False)  # what an aborted earlier test left
        try:
            t = time.monotonic()
            stack.compose("build", timeout=1200)
            stack.timings["build_s"] = time.monotonic() - t
            t = time.monotonic()
            stack.compose("up", "-d", timeout=600)
            stack.timings["up_s"] = time.monotonic() - t
            client = mlflow_client(stack.url)
            # the MLflow run exists once the backbone is pretrained and the stages are submitted
            wait_for(lambda: [r for r in _demo_runs(client) if r.info.status == "RUNNING"], RUNNER_TIMEOUT_S, "the demo's MLflow run")
            restart_at_ms = int(time.time() * 1000)
            stack.compose("restart", "mlflow", timeout=300)
            exit_code = stack.wait_exit("runner", RUNNER_TIMEOUT_S)
            stack.timings["first_run_s"] = time.monotonic() - t
            yield FirstRun(stack, exit_code, restart_at_ms, stack.logs("runner"))
        finally:
            stack.compose("down", "-v", "--remove-orphans", check=False, timeout=300)
            stack.timings["total_s"] = time.monotonic() - started
            print(f"\nstack test timings (s): {json.dumps({k: round(v, 1) for k, v in stack.timings.items()})}")


@pytest.fixture(scope="module")
def demo_run(first_run):
    assert first_run.exit_code == 0, f"the runner exited {first_run.exit_code}:\n{first_run.runner_log[-4000:]}"
    client = mlflow_client(first_run.stack.url)
    wait_for(lambda: client.get_experiment_by_name(EXPERIMENT), 120, "MLflow after the restart")
    runs = _demo_runs(client)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def test_runner_finished_with_the_readme_numbers(first_run, demo_run):
    _, run = demo_run
    assert run.info.status == "FINISHED"
    for key, percent in README_SUMMARY.items():
        assert round(run.data.metrics[f"final/{key}"] * 100, 2) == pytest.approx(percent, abs=1e-9), key
    assert "final_acc_task_mean" in first_run.runner_log  # the summary table in the runner's log


def test_mlflow_restarted_mid_run(first_run, demo_run):
    _, run = demo_run
    assert run.info.start_time < first_run.restart_at_ms < run.info.end_time


def test_every_per_task_metric_logged_exactly_once(demo_run):
    client, run = demo_run
    for task in range(NUM_TASKS):
        for part in ("test", "val"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, f"acc/{part}/task_{task:03d}")]
            assert sorted(steps) == list(range(task, NUM_TASKS)), (part, task, steps)
    for key in ("acc/test/task_mean", "acc/test/sample_weighted", "forgetting/test"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == sorted(set(steps)) and steps, (key, steps)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "acc/test/task_mean")) == list(range(NUM_TASKS))


def test_artifacts_on_the_server(demo_run):
    client, run = demo_run
    run_id = run.info.run_id
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "accuracy_matrix_test.csv", "plots", "run_dir"} <= top, top
    assert {a.path for a in client.list_artifacts(run_id, "plots")} >= {"plots/accuracy_matrix.png", "plots/accuracy_curves.png"}
    with open(client.download_artifacts(run_id, "accuracy_matrix_test.csv"), "rb") as fh:
        matrix = pd.read_csv(io.BytesIO(fh.read()), index_col=0)
    # the CSV's last row is R[4, :], the per-task metrics at step 4
    for task in range(NUM_TASKS):
        assert matrix.iloc[-1, task] == pytest.approx(run.data.metrics[f"acc/test/task_{task:03d}"], abs=1e-6)
    assert client.get_experiment(run.info.experiment_id).tags.get("mlflow.experimentKind") == "custom_model_development"


def _worker_node_ids(stack: Stack) -> set[str]:
    """Node ids of the cluster's nodes with CPUs (the workers), asked from the head."""
    code = ("import json, ray; ray.init(address='auto', log_to_driver=False); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive'] and n['Resources'].get('CPU', 0) > 0]))")
    return set(json.loads(stack.exec("ray-head", "python", "-c", code).strip().splitlines()[-1]))


def test_stages_ran_on_both_workers(first_run, demo_run):
    _, run = demo_run
    nodes = json.loads(run.data.tags["nodes"])  # {node id: stages run there}
    assert sum(nodes.values()) == 1 + 4 * NUM_TASKS, nodes  # split + design/train/update/eval per task
    workers = _worker_node_ids(first_run.stack)
    assert len(workers) == 2 and len(first_run.stack.running("ray-worker")) == 2
    assert set(nodes) == workers


def test_only_localhost_is_published(first_run):
    stack = first_run.stack
    ids = stack.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").split()
    published = {}
    for info in json.loads(stack.docker("inspect", *ids)):
        for port, bindings in (info["NetworkSettings"]["Ports"] or {}).items():
            for binding in bindings or []:
                published.setdefault(info["Config"]["Labels"]["com.docker.compose.service"], []).append((binding["HostIp"], binding["HostPort"], port))
    assert published == {"mlflow": [("127.0.0.1", str(stack.port), "5000/tcp")]}


def test_no_object_store_on_tmp(first_run):
    logs = first_run.stack.logs("ray-head", "ray-worker", "runner")
    assert logs.count("Ray runtime started") >= 3  # head, two workers (and the runner's node)
    assert OBJECT_STORE_FALLBACK not in logs


def test_rerun_skips_every_finished_stage(first_run, demo_run):
    stack = first_run.stack
    client, run = demo_run
    events = "cat /app/runs/*/events.jsonl"
    starts_before = stack.exec("ray-head", "sh", "-c", events).count('"event": "start"')
    assert starts_before == 1 + 4 * NUM_TASKS
    stack.compose("up", "-d", "runner", timeout=300)  # `up runner` keeps the two workers (scale: 2)
    assert stack.wait_exit("runner", RUNNER_TIMEOUT_S) == 0, stack.logs("runner")[-4000:]
    assert len(stack.running("ray-worker")) == 2
    assert stack.exec("ray-head", "sh", "-c", events).count('"event": "start"') == starts_before
    runs = _demo_runs(client)
    assert [r.info.run_id for r in runs] == [run.info.run_id] and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "acc/test/task_000")]
    assert sorted(steps) == list(range(NUM_TASKS))
