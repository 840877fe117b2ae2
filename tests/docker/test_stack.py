"""The docker-compose stack on a real Docker engine: build, up, the demo, restarts, re-run, down.

No image registry is reachable where this project is tested, so the engine and
stand-ins for the two public base images come from ``../shared/docker-local``
(beside the checkout in CI; ``INFLORA_DOCKER_LOCAL`` names another place): its
``start-engine.sh`` starts Debian's dockerd, ``base-images.sh`` builds
``local/python:3.11-slim`` and ``local/postgres:16``, and its
``compose.override.yaml`` swaps only those images, an empty ``TORCH_INDEX_URL``
(torch from PyPI) and host networking for builds. Everything else is
``docker/compose.yaml`` as a user runs it.

The stack comes up with ``up -d`` and no ``--scale``: the two workers are the
file's default. While the runner's demo is running, ``mlflow`` is restarted; the
run must still end with every per-task metric logged exactly once. Its stages
must have run on both workers (the ``nodes`` tag the pipeline logs);
only 127.0.0.1 may be published; no Ray node may fall back to /tmp for its
object store. ``up -d runner`` then re-runs the demo on the same cluster (two
workers still): every stage is skipped. ``down -v`` removes everything.

It takes minutes (a cold build about 5), so it runs in CI (``INFLORA_CI=1``,
where an engine that cannot start is a failure) or with ``INFLORA_STACK=1``.
The engine's layer cache lives under /var/lib/inflora-docker.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKER_LOCAL = Path(os.environ.get("INFLORA_DOCKER_LOCAL", ROOT.parent / "shared" / "docker-local"))
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


def _in_ci() -> bool:
    return bool(os.environ.get("INFLORA_CI"))


def _unavailable(reason: str):
    if _in_ci():
        pytest.fail(f"{reason}, and INFLORA_CI is set: CI must run the stack")
    pytest.skip(f"{reason} (INFLORA_CI=1 makes this a failure)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    env: dict[str, str]
    port: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        return ["-p", PROJECT, "-f", str(COMPOSE), "-f", str(DOCKER_LOCAL / "compose.override.yaml")]

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["docker-compose", *self.files, *args], cwd=ROOT, env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    def docker(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"docker {' '.join(args)} failed:\n{result.stderr[-2000:]}"
        return result.stdout

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def running(self, service: str) -> list[str]:
        out = self.docker("ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
                          "--filter", f"label=com.docker.compose.service={service}")
        return out.split()

    def wait_exit(self, service: str, timeout_s: float) -> int:
        """Exit code of the service's (only) container, once it stopped."""
        (container,) = self.containers(service)
        return int(self.docker("wait", container, timeout=timeout_s).strip())

    def exec(self, service: str, *cmd: str, timeout: float = 120) -> str:
        return self.compose("exec", "-T", service, *cmd, timeout=timeout).stdout

    def logs(self, *services: str) -> str:
        return self.compose("logs", "--no-color", *services, check=False).stdout

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


_STATE = Path(os.environ.get("INFLORA_DOCKER_STATE", "/var/lib/inflora-docker"))
_SOCKET = os.environ.get("INFLORA_DOCKER_SOCK", "/run/inflora-docker.sock")


def _engine_answers(env: dict[str, str]) -> bool:
    probe = subprocess.run(["docker", "info"], env={**env, "DOCKER_HOST": f"unix://{_SOCKET}"}, capture_output=True, timeout=30)
    return probe.returncode == 0


def _stop_engine() -> None:
    """Stop the dockerd this test started (its layer cache stays on disk)."""
    pid_file = _STATE / "dockerd.pid"
    if pid_file.is_file():
        subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True)


def _start_engine() -> dict[str, str]:
    if not (DOCKER_LOCAL / "start-engine.sh").is_file():
        _unavailable(f"{DOCKER_LOCAL} (the local Docker engine recipe) is missing")
    if os.geteuid() != 0:
        _unavailable("starting the Docker engine needs root")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS") and not k.startswith("COMPOSE_")}
    started = subprocess.run(["bash", str(DOCKER_LOCAL / "start-engine.sh")], env=env, capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        _unavailable(f"the Docker engine did not start: {(started.stderr or started.stdout).strip()[-500:]}")
    env["DOCKER_HOST"] = started.stdout.strip().splitlines()[-1].split("=", 1)[1]
    images = subprocess.run(["bash", str(DOCKER_LOCAL / "base-images.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert images.returncode == 0, f"base-images.sh failed:\n{images.stderr[-3000:]}"
    # no buildx in Debian 12: the legacy builder (root .dockerignore keeps the context small)
    env.update(DOCKER_BUILDKIT="0", COMPOSE_DOCKER_CLI_BUILD="1", COMPOSE_HTTP_TIMEOUT="300")
    return env


def _mlflow_client(url: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url)


def _wait_for(predicate, timeout_s: float, what: str, poll_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the server is coming up
            last_error = exc
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last error: {last_error})")


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
    if not (_in_ci() or os.environ.get("INFLORA_STACK")):
        pytest.skip("the stack test takes minutes: set INFLORA_STACK=1 (CI sets INFLORA_CI=1)")
    if shutil.which("docker-compose") is None and not _in_ci():
        pytest.skip("docker-compose is not installed")
    started = time.monotonic()
    engine_was_up = shutil.which("docker") is not None and _engine_answers(dict(os.environ))
    env = _start_engine()
    port = _free_port()
    stack = Stack({**env, "MLFLOW_PORT": str(port)}, port)
    stack.timings["engine_and_base_images_s"] = time.monotonic() - started
    stack.compose("down", "-v", "--remove-orphans", check=False)  # what an aborted earlier test left
    try:
        t = time.monotonic()
        stack.compose("build", timeout=1200)
        stack.timings["build_s"] = time.monotonic() - t
        t = time.monotonic()
        stack.compose("up", "-d", timeout=600)
        stack.timings["up_s"] = time.monotonic() - t
        client = _mlflow_client(stack.url)
        # the MLflow run exists once the backbone is pretrained and the stages are submitted
        _wait_for(lambda: [r for r in _demo_runs(client) if r.info.status == "RUNNING"], RUNNER_TIMEOUT_S, "the demo's MLflow run")
        restart_at_ms = int(time.time() * 1000)
        stack.compose("restart", "mlflow", timeout=300)
        exit_code = stack.wait_exit("runner", RUNNER_TIMEOUT_S)
        stack.timings["first_run_s"] = time.monotonic() - t
        yield FirstRun(stack, exit_code, restart_at_ms, stack.logs("runner"))
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False, timeout=300)
        if not engine_was_up:
            _stop_engine()
        stack.timings["total_s"] = time.monotonic() - started
        print(f"\nstack test timings (s): {json.dumps({k: round(v, 1) for k, v in stack.timings.items()})}")


@pytest.fixture(scope="module")
def demo_run(first_run):
    assert first_run.exit_code == 0, f"the runner exited {first_run.exit_code}:\n{first_run.runner_log[-4000:]}"
    client = _mlflow_client(first_run.stack.url)
    _wait_for(lambda: client.get_experiment_by_name(EXPERIMENT), 120, "MLflow after the restart")
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
