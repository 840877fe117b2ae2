"""docs/cluster.md's cluster recipe, run line by line on this machine with the pinned Ray.

Ray 2.60 authenticates with a token; a recipe that forgets ``RAY_AUTH_MODE`` and the
token path on one side fails to connect. The block is taken from the page itself, so
the page cannot drift from what works. Substituted: ``<head-ip>`` → 127.0.0.1, port
6379 → a free port, ``/shared`` → a temporary folder, the MLflow server → a sqlite
file, the paper config → the tiny test config (its checkpoint copied to the documented
path). Left out: the worker line and the line by which a driver off the cluster joins
it (one machine: the driver runs on the head node); the compose-stack test
(``tests/docker/test_cluster_recipe_stack.py``) runs those across containers. Ray's
files go under a private ``RAY_TMPDIR``, and the cluster's processes are found there
and stopped by pid (``ray stop`` would stop every Ray cluster of this user).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from cluster_recipe import PAPER_CONFIG, SHARED, fill_shared, recipe_parts

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_cluster(ray_tmp: Path) -> None:
    """Kill the processes of the cluster whose files are under ``ray_tmp`` (and only those)."""
    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(ray_tmp) in part for part in proc.info["cmdline"] or []):
            mine.append(proc)
    for proc in mine:
        for child in proc.children(recursive=True):
            mine.append(child)
    for proc in mine:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def test_the_documented_recipe_runs_as_written(tmp_path, tiny_checkpoint):
    shared = Path(tempfile.mkdtemp(prefix="sh-", dir="/tmp"))  # short: Ray's socket paths live under RAY_TMPDIR
    ray_tmp = shared / "raytmp"
    ray_tmp.mkdir()
    config = tmp_path / "tiny.yaml"
    checkpoint = fill_shared(shared, tiny_checkpoint, config, shared_as=str(shared))
    parts = recipe_parts({"<head-ip>": "127.0.0.1", "6379": str(_free_port()), SHARED: str(shared),
                          "http://<mlflow-host>:5000": f"sqlite:///{tmp_path / 'mlflow.db'}", PAPER_CONFIG: str(config)})
    script = "\n".join(parts[role] for role in ("token", "env", "head", "driver"))
    script += "\nprintf 'RUNS %s\\n' \"$(ls " + str(shared / "runs") + ")\"\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_TRACKING"))}
    env.update(RAY_TMPDIR=str(ray_tmp), PATH=f"{Path(sys.executable).parent}:{env['PATH']}", PYTHONPATH=str(ROOT),
               RAY_USAGE_STATS_ENABLED="0")
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
        assert "tiny/inflora/seed0: test accuracy" in done.stdout
        assert "RUNS tiny-inflora-seed0-" in done.stdout  # output_dir=/shared/runs
        token = shared / "ray" / "token"
        assert oct(token.stat().st_mode & 0o777) == "0o600"
        run_json = next((shared / "runs").glob("*/run.json"))
        assert json.loads(run_json.read_text())["config"]["backbone"]["checkpoint"] == checkpoint
        assert (tmp_path / "mlflow.db").is_file()  # MLFLOW_TRACKING_URI, not the config, named the store
    finally:
        _stop_cluster(ray_tmp)
        shutil.rmtree(shared, ignore_errors=True)
