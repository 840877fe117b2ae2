"""A real ``mlflow server`` process, and a 2-task run logged to it over HTTP.

The server is started as docker/compose.yaml's ``mlflow`` service starts it:
proxied artifacts (``--serve-artifacts --artifacts-destination``), the server's
job execution off, and the compose file's ``--allowed-hosts``; only the backend
store (sqlite instead of PostgreSQL) and the address (127.0.0.1, a free port)
differ. It takes 10-15 s to answer ``/health``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from process_helpers import stop_process_group
import yaml

from pipeline.running.runner import execute, make_specs

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker" / "compose.yaml"
STARTUP_TIMEOUT_S = 120


@dataclass
class Server:
    url: str
    port: int
    artifacts: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mlflow_command() -> list[str]:
    script = Path(sys.executable).with_name("mlflow")
    if script.is_file():
        return [str(script)]
    found = shutil.which("mlflow")
    if found is None:
        pytest.fail("the mlflow command is not installed next to this Python")
    return [found]


def _compose_allowed_hosts() -> str:
    """The ``--allowed-hosts`` value of the compose stack's mlflow service."""
    command = yaml.safe_load(COMPOSE.read_text())["services"]["mlflow"]["command"]
    return command[command.index("--allowed-hosts") + 1]


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP(S)_PROXY


def _get(url: str, host: str | None = None, timeout: float = 5.0) -> int:
    headers = {"Host": host} if host else {}
    try:
        with _DIRECT.open(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@dataclass
class _Started:
    proc: subprocess.Popen
    url: str
    port: int
    artifacts: Path
    log: Path


@pytest.fixture(scope="module")
def _server_process(tmp_path_factory):
    """Starts the server without waiting for it (see ``mlflow_server``)."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    log_path = root / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    cmd = [
        *_mlflow_command(), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--allowed-hosts", _compose_allowed_hosts(),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        # Own session: the server forks workers; teardown kills the whole group.
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield _Started(proc, f"http://127.0.0.1:{port}", port, root / "artifacts", log_path)
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="module")
def mlflow_server(_server_process, tiny_checkpoint) -> Server:
    """The server, healthy. It boots while ``tiny_checkpoint`` is pretrained (when
    no earlier test has made it yet): fixtures are set up in argument order."""
    started = _server_process
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if started.proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {started.proc.returncode}:\n{_log_tail(started.log)}")
        try:
            if _get(f"{started.url}/health", timeout=2) == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"mlflow server not healthy after {STARTUP_TIMEOUT_S} s:\n{_log_tail(started.log)}")
        time.sleep(0.25)
    return Server(started.url, started.port, started.artifacts, started.log)


def test_server_admits_the_stack_hosts_only(mlflow_server):
    """The compose stack's runner sends ``Host: mlflow:5000``; MLflow refuses Host
    headers outside ``--allowed-hosts`` (DNS-rebinding protection), /health excepted."""
    api = f"{mlflow_server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    for host in ("mlflow:5000", "mlflow", f"127.0.0.1:{mlflow_server.port}", "localhost:5000"):
        assert _get(api, host) == 200, host
    assert _get(api, "attacker.example:5000") == 403
    assert _get(f"{mlflow_server.url}/health", "attacker.example:5000") == 200


def test_two_task_run_logged_to_server(mlflow_server, tiny_config, monkeypatch, tmp_path):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)  # wins over tracking.uri (a sqlite file)
    for name in ("NO_PROXY", "no_proxy"):  # the MLflow client must not send 127.0.0.1 to a proxy
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"])))
    cfg = tiny_config(data={"num_tasks": 2}, tracking={"experiment": "server-test"})
    epochs = cfg.train.epochs
    (outcome,) = execute(make_specs(cfg), progress=False)
    assert outcome.status == "FINISHED"

    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = client.get_experiment_by_name("server-test")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [outcome.run_id]
    run = runs[0]
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri

    params, tags = run.data.params, run.data.tags
    assert params["method.inflora.rank"] == "2"
    assert params["method.name"] == "inflora"
    assert params["data.num_tasks"] == "2"
    assert params["seed"] == "0"
    assert tags["seed"] == "0"
    assert tags["method"] == "inflora"
    assert sorted(int(c) for c in tags["class_order"].split()) == list(range(10))

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    first, second, mean = history("acc/test/task_000"), history("acc/test/task_001"), history("acc/test/task_mean")
    assert [step for step, _ in first] == [0, 1]
    assert [step for step, _ in second] == [1]
    assert [step for step, _ in mean] == [0, 1]
    assert all(0.0 <= v <= 1.0 for _, v in first + second + mean)
    assert mean[1][1] == pytest.approx((first[1][1] + second[0][1]) / 2)
    assert [step for step, _ in history("memory/rank_mean")] == [0, 1]
    assert [step for step, _ in history("train/loss")] == list(range(2 * epochs))
    assert run.data.metrics["final/final_acc_task_mean"] == pytest.approx(mean[1][1])

    root = {a.path for a in client.list_artifacts(run_id)}
    assert {"accuracy_matrix_test.csv", "accuracy_matrix_val.csv", "config.yaml", "plots", "adapters", "run_dir"} <= root
    assert "plots/accuracy_matrix.png" in {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {a.path for a in client.list_artifacts(run_id, "adapters")} == {"adapters/session_000", "adapters/session_001"}
    assert "adapters/session_001/adapter.safetensors" in {a.path for a in client.list_artifacts(run_id, "adapters/session_001")}

    # Downloaded through the server's artifact proxy; stored under its --artifacts-destination.
    matrix = pd.read_csv(client.download_artifacts(run_id, "accuracy_matrix_test.csv", str(tmp_path)), index_col=0)
    np.testing.assert_allclose(matrix.to_numpy(), outcome.results().test.to_numpy(), atol=1e-6)
    logged_cfg = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text())
    assert logged_cfg["method"]["inflora"]["rank"] == 2
    assert list(mlflow_server.artifacts.rglob("accuracy_matrix_test.csv")), "artifacts not in the server's store"
