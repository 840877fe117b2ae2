"""A run on a real Ray cluster started by ``ray start``, as the compose stack's runner does it.

The cluster is a separate process group (``ray start --head --block``), with token
authentication on; the run is ``inflora run`` in a subprocess with ``RAY_ADDRESS``
set to the head, so ``init_ray`` connects instead of starting its own cluster.
Its accuracy matrices must equal, exactly, those of the same config run in-process
(``resources.executor: local``): stages seed everything from (seed, session, purpose).

Token authentication (Ray >= 2.59 turns it on for clusters that ``ray.init()``
starts): ``ray start`` nodes and drivers given an explicit address enable it only
when ``RAY_AUTH_MODE=token`` is set, and then read the token from
``RAY_AUTH_TOKEN`` or the file ``RAY_AUTH_TOKEN_PATH`` (else ``~/.ray/auth_token``).
Both sides get the same mode and token file here, as in docker/compose.yaml.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import tiny_config_dict
from process_helpers import stop_process_group

from pipeline.running.stages import method_of
from pipeline.config import config_from_dict
from pipeline.reporting.results import collect_results
from pipeline.running.runner import execute, make_specs
from pipeline.running.state import RunDir

pytestmark = pytest.mark.ray

STARTUP_TIMEOUT_S = 90
RUN_TIMEOUT_S = 300
# Variables that would point the cluster or the driver elsewhere.
_FOREIGN_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI")


@dataclass
class RayHead:
    address: str
    auth_env: dict[str, str]
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_command() -> str:
    script = Path(sys.executable).with_name("ray")
    found = str(script) if script.is_file() else shutil.which("ray")
    if found is None:
        pytest.fail("the ray command is not installed next to this Python")
    return found


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", **extra)
    return env


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class _Started:
    proc: subprocess.Popen
    port: int
    temp_dir: Path
    auth_env: dict[str, str]
    log: Path


@pytest.fixture(scope="module")
def _ray_process(tmp_path_factory):
    """Starts a 2-CPU Ray head with token authentication in its own process group,
    without waiting for it (see ``ray_head``)."""
    auth_dir = tmp_path_factory.mktemp("ray_auth")
    token_file = auth_dir / "token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    # Short: Ray's unix sockets live under it, and socket paths are limited to 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    log_path = auth_dir / "ray_start.log"
    port = _free_port()
    cmd = [
        _ray_command(), "start", "--head", f"--port={port}",
        "--num-cpus=2", "--num-gpus=0", "--object-store-memory=200000000",
        "--include-dashboard=false", f"--dashboard-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=_clean_env(**auth_env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield _Started(proc, port, temp_dir, auth_env, log_path)
    finally:
        stop_process_group(proc, grace_s=1.0)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(_ray_process, tiny_checkpoint) -> RayHead:
    """The head, ready. It boots while ``tiny_checkpoint`` is pretrained (when no
    earlier test has made it yet): fixtures are set up in argument order."""
    started = _ray_process
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while "Ray runtime started" not in started.log.read_text(errors="replace"):
        if started.proc.poll() is not None:
            pytest.fail(f"ray start exited with {started.proc.returncode}:\n{_log_tail(started.log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"ray start not ready after {STARTUP_TIMEOUT_S} s:\n{_log_tail(started.log)}")
        time.sleep(0.25)
    current = started.temp_dir / "ray_current_cluster"
    address = current.read_text().strip() if current.is_file() else f"127.0.0.1:{started.port}"
    return RayHead(address, started.auth_env, started.log)


def _results(cfg_dict: dict):
    cfg = config_from_dict(cfg_dict)
    (spec,) = make_specs(cfg)
    sessions = method_of(cfg).sessions(cfg.data.num_tasks)
    return RunDir(spec.run_dir), collect_results(RunDir(spec.run_dir), sessions)


def _stage_pids(run_dir: RunDir) -> set[int]:
    lines = run_dir.file("events.jsonl").read_text().splitlines()
    return {json.loads(line)["pid"] for line in lines if json.loads(line)["event"] == "start"}


def test_run_on_ray_cluster_equals_local_run(ray_head, tiny_checkpoint, tmp_path):
    common = {"data": {"num_tasks": 2}, "tracking": {"enabled": False}}
    on_ray = tiny_config_dict(tmp_path / "ray", tiny_checkpoint, resources={"executor": "ray"}, **common)
    local = tiny_config_dict(tmp_path / "local", tiny_checkpoint, resources={"executor": "local"}, **common)
    config_path = tmp_path / "ray.yaml"
    config_path.write_text(yaml.safe_dump(on_ray))

    env = _clean_env(RAY_ADDRESS=ray_head.address, **ray_head.auth_env)
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(config_path), "--no-progress"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        stdout, stderr = driver.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, f"inflora run failed:\n{stdout[-3000:]}\n{stderr[-5000:]}\n{_log_tail(ray_head.log)}"
    assert "Connecting to existing Ray cluster" in stderr, "the driver started its own cluster"

    (outcome,) = execute(make_specs(config_from_dict(local)), progress=False)
    assert outcome.status == "FINISHED"

    ray_dir, ray_results = _results(on_ray)
    local_dir, local_results = _results(local)
    assert ray_results.sessions_done == local_results.sessions_done == 2
    pd.testing.assert_frame_equal(ray_results.test, local_results.test, check_exact=True)
    pd.testing.assert_frame_equal(ray_results.val, local_results.val, check_exact=True)
    # The stages ran in Ray worker processes, not in the driver; the local ones in this process.
    assert driver.pid not in _stage_pids(ray_dir)
    assert _stage_pids(local_dir) == {os.getpid()}


def test_cluster_refuses_clients_without_its_token(ray_head, tmp_path):
    """Token authentication is really on: only a client with the cluster's token gets in."""
    wrong_token = tmp_path / "wrong_token"
    wrong_token.write_text(secrets.token_hex(32))
    clients = {
        "the cluster's token": ray_head.auth_env,
        "another token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong_token)},
        "no RAY_AUTH_MODE": {},
    }
    checks = {
        name: subprocess.Popen(
            [_ray_command(), "health-check", f"--address={ray_head.address}"],
            env=_clean_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for name, env in clients.items()
    }
    outputs = {name: proc.communicate(timeout=60)[0] for name, proc in checks.items()}
    codes = {name: proc.returncode for name, proc in checks.items()}
    assert codes["the cluster's token"] == 0, outputs["the cluster's token"][-2000:]
    for name in ("another token", "no RAY_AUTH_MODE"):
        assert codes[name] != 0, f"a client with {name} got in"
        assert "Authentication" in outputs[name] or "auth" in outputs[name].lower(), outputs[name][-2000:]
