"""Real services on 127.0.0.1 for tests and benchmarks: PostgreSQL 15, an MLflow server, a Ray head.

Each runs in its own process group (killed as a group on exit, so no helper
outlives it) in a temporary directory. PostgreSQL's ``initdb`` refuses to run
as root: under root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = ["free_port", "postgres", "mlflow_server", "ray_head", "metric_counts", "stop_group"]

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # helpers of the group
                return
        except subprocess.TimeoutExpired:
            continue


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL 15 server in a fresh temporary directory on a free port; yields a SQLAlchemy
    URI of its ``postgres`` database (the psycopg 3 driver: SQLAlchemy 2.1 maps plain
    ``postgresql://`` to it). The directory is in ``/tmp`` itself: under root the server
    runs as ``postgres``, which must reach it."""
    postgres_bin = shutil.which("postgres") or "/usr/lib/postgresql/15/bin/postgres"
    bindir = Path(postgres_bin).resolve().parent
    if not (bindir / "initdb").exists():
        raise RuntimeError(f"PostgreSQL's initdb is not installed next to {postgres_bin}")
    root = Path(tempfile.mkdtemp(prefix="inflora-pg-"))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data, port, log = root / "data", free_port(), root / "postgres.log"
    proc = None
    try:
        subprocess.run([*_as_postgres(), str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True, cwd=root)  # fmt: skip
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [*_as_postgres(), str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(root)],
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start:\n{_tail(log)}")
            time.sleep(0.2)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if proc is not None:
            stop_group(proc)
        shutil.rmtree(root, ignore_errors=True)


def _mlflow_command() -> list[str]:
    script = Path(sys.executable).with_name("mlflow")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mlflow"]


@contextlib.contextmanager
def mlflow_server(backend_uri: str, root: Path, port: int | None = None, timeout_s: float = 180) -> Iterator[str]:
    """``mlflow server`` on ``backend_uri`` with proxied artifacts in ``root``; yields its URL once healthy."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    cmd = [*_mlflow_command(), "server", "--backend-store-uri", backend_uri, "--serve-artifacts",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"mlflow-{port}.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{_tail(log)}")
            with contextlib.suppress(OSError):
                with _DIRECT.open(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy after {timeout_s:.0f} s:\n{_tail(log)}")
            time.sleep(0.25)
        yield url
    finally:
        stop_group(proc)


@contextlib.contextmanager
def ray_head(num_cpus: int) -> Iterator[dict[str, str]]:
    """A Ray head with token authentication (``ray start --head --block``) in its own process
    group; yields the environment a driver needs to join it (``RAY_ADDRESS``, the token)."""
    import secrets

    port = free_port()
    ray = Path(sys.executable).with_name("ray")
    root = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths are limited to 107 bytes
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    log = root / "ray.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", **auth)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(ray), "start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}", "--num-gpus=0",
             "--include-dashboard=false", f"--dashboard-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
             f"--temp-dir={root / 't'}", "--disable-usage-stats"],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start:\n{_tail(log)}")
            time.sleep(0.5)
        current = root / "t" / "ray_current_cluster"
        address = current.read_text().strip() if current.is_file() else f"127.0.0.1:{port}"
        yield {"RAY_ADDRESS": address, **auth}
    finally:
        stop_group(proc, grace_s=1.0)
        shutil.rmtree(root, ignore_errors=True)


def metric_counts(uri: str, experiment: str | None = None) -> dict[str, collections.Counter]:
    """Per run directory name, every (key, step, value) the store holds, counted.

    MLflow's system metrics (``system/…``) are left out: they are samples of the
    machine while a command ran, not results, and differ between any two runs.
    """
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    ids = [client.get_experiment_by_name(experiment).experiment_id] if experiment else [e.experiment_id for e in client.search_experiments()]
    out: dict[str, collections.Counter] = {}
    for run in client.search_runs(ids, max_results=10000):
        counter: collections.Counter = collections.Counter()
        for key in (k for k in run.data.metrics if not k.startswith("system/")):
            counter.update((m.key, m.step, round(m.value, 9)) for m in client.get_metric_history(run.info.run_id, key))
        out[Path(run.data.tags["run_dir"]).name] = counter
    return out


def replay_to_sqlite(run_dirs: list[Path], config: dict, root: Path) -> str:
    """Log copies of finished ``run_dirs`` to a fresh sqlite store in one go (the reference a
    tracking store under test must equal); returns its URI. ``config`` is the runs' config dict."""
    from pipeline.config import config_from_dict
    from pipeline.running.runner import execute, spec_from_run_dir

    uri = f"sqlite:///{root / 'reference.db'}"
    specs = []
    for run_dir in run_dirs:
        copy = root / "reference_runs" / Path(run_dir).name
        shutil.copytree(run_dir, copy)
        for name in ("tracking.json", ".lock"):
            (copy / name).unlink(missing_ok=True)
        spec = spec_from_run_dir(str(copy))
        tracking = {**config.get("tracking", {}), "uri": uri, "offline": False}
        resources = {**config.get("resources", {}), "executor": "local"}  # every stage is done: nothing to schedule
        data = {**config, "tracking": tracking, "resources": resources, "output_dir": str(copy.parent)}
        specs.append(type(spec)(config_from_dict(data), spec.seed, str(copy)))
    execute(specs, progress=False)
    return uri
