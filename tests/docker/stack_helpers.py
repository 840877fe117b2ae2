"""The Docker engine and the compose stack, for the tests that run them (``-m stack``).

No image registry is reachable where this project is tested, so the engine and
stand-ins for the two public base images come from ``../shared/docker-local``
(beside the checkout in CI; ``INFLORA_DOCKER_LOCAL`` names another place): its
``start-engine.sh`` starts Debian's dockerd, ``base-images.sh`` builds
``local/python:3.11-slim`` and ``local/postgres:16``, and its
``compose.override.yaml`` swaps only those images, an empty ``TORCH_INDEX_URL``
(torch from PyPI) and host networking for builds. Everything else is
``docker/compose.yaml`` as a user runs it. The engine's layer cache lives under
/var/lib/inflora-docker, so the image is built once for every stack test.

These tests take minutes, so they run in CI (``INFLORA_CI=1``, where an engine that
cannot start is a failure) or with ``INFLORA_STACK=1``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKER_LOCAL = Path(os.environ.get("INFLORA_DOCKER_LOCAL", ROOT.parent / "shared" / "docker-local"))
_STATE = Path(os.environ.get("INFLORA_DOCKER_STATE", "/var/lib/inflora-docker"))
_SOCKET = os.environ.get("INFLORA_DOCKER_SOCK", "/run/inflora-docker.sock")


def in_ci() -> bool:
    return bool(os.environ.get("INFLORA_CI"))


def unavailable(reason: str):
    if in_ci():
        pytest.fail(f"{reason}, and INFLORA_CI is set: CI must run the stack")
    pytest.skip(f"{reason} (INFLORA_CI=1 makes this a failure)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    """``docker/compose.yaml`` (with the local override) as compose project ``project``."""

    env: dict[str, str]
    port: int
    project: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        return ["-p", self.project, "-f", str(COMPOSE), "-f", str(DOCKER_LOCAL / "compose.override.yaml")]

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["docker-compose", *self.files, *args], cwd=ROOT, env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    def docker(self, *args: str, timeout: float = 120, stdin: bytes | None = None) -> str:
        result = subprocess.run(["docker", *args], env=self.env, capture_output=True, timeout=timeout, input=stdin)
        assert result.returncode == 0, f"docker {' '.join(args)} failed:\n{result.stderr.decode()[-2000:]}"
        return result.stdout.decode()

    def image(self, service: str) -> str:
        """The image that ``build`` tags for ``service`` (``inflora-pipeline:…``)."""
        return yaml.safe_load(self.compose("config").stdout)["services"][service]["image"]

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def running(self, service: str) -> list[str]:
        out = self.docker("ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
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


def _engine_answers(env: dict[str, str]) -> bool:
    probe = subprocess.run(["docker", "info"], env={**env, "DOCKER_HOST": f"unix://{_SOCKET}"}, capture_output=True, timeout=30)
    return probe.returncode == 0


def _stop_engine(grace_s: float = 60) -> None:
    """Stop the dockerd this test started (its layer cache stays on disk), and wait until it is gone:
    a later test would otherwise find it still answering and then lose it."""
    pid_file = _STATE / "dockerd.pid"
    if not pid_file.is_file():
        return
    pid = int(pid_file.read_text().strip())
    subprocess.run(["kill", str(pid)], capture_output=True)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.5)


def _start_engine() -> dict[str, str]:
    if not (DOCKER_LOCAL / "start-engine.sh").is_file():
        unavailable(f"{DOCKER_LOCAL} (the local Docker engine recipe) is missing")
    if os.geteuid() != 0:
        unavailable("starting the Docker engine needs root")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS") and not k.startswith("COMPOSE_")}
    started = subprocess.run(["bash", str(DOCKER_LOCAL / "start-engine.sh")], env=env, capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        unavailable(f"the Docker engine did not start: {(started.stderr or started.stdout).strip()[-500:]}")
    env["DOCKER_HOST"] = started.stdout.strip().splitlines()[-1].split("=", 1)[1]
    images = subprocess.run(["bash", str(DOCKER_LOCAL / "base-images.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert images.returncode == 0, f"base-images.sh failed:\n{images.stderr[-3000:]}"
    # no buildx in Debian 12: the legacy builder (root .dockerignore keeps the context small)
    env.update(DOCKER_BUILDKIT="0", COMPOSE_DOCKER_CLI_BUILD="1", COMPOSE_HTTP_TIMEOUT="300")
    return env


@contextmanager
def docker_engine() -> Iterator[dict[str, str]]:
    """The environment that reaches a running engine with the base images; the engine is
    stopped afterwards if it was started here. Skips unless in CI or ``INFLORA_STACK`` is set."""
    if not (in_ci() or os.environ.get("INFLORA_STACK")):
        pytest.skip("the stack tests take minutes: set INFLORA_STACK=1 (CI sets INFLORA_CI=1)")
    if shutil.which("docker-compose") is None and not in_ci():
        pytest.skip("docker-compose is not installed")
    engine_was_up = shutil.which("docker") is not None and _engine_answers(dict(os.environ))
    try:
        yield _start_engine()
    finally:
        if not engine_was_up:
            _stop_engine()


def mlflow_client(url: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url)


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 1.0):
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
