"""docs/cluster.md's cluster recipe, run line by line on this machine with the pinned Ray.

Ray 2.60 authenticates with a token; a recipe that forgets ``RAY_AUTH_MODE`` and the
token path on one side fails to connect. The block is taken from the page itself, so
the page cannot drift from what works. Substituted: ``<head-ip>`` → 127.0.0.1, port
6379 → a free port, ``/shared`` → a temporary folder, the MLflow server → a sqlite
file, the paper config → the tiny test config (its checkpoint copied to the documented
path). Left out: the worker line (one machine). Ray's files go under a private
``RAY_TMPDIR``, and the cluster's processes are found there and stopped by pid (``ray
stop`` would stop every Ray cluster of this user).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import tiny_config_dict

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cluster.md"
PAPER_CONFIG = "configs/paper/imagenet_r_10.yaml"


def _recipe() -> str:
    text = DOC.read_text()
    section = text.split("## A Ray cluster by hand", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


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
    checkpoint = shared / "checkpoints" / "vit_base_patch16_224.augreg_in21k.safetensors"
    checkpoint.parent.mkdir(parents=True)
    shutil.copyfile(tiny_checkpoint, checkpoint)
    (shared / "data" / "imagenet_r").mkdir(parents=True)
    (shared / "data" / "imagenet_r" / "README").write_text("the tiny config reads the packaged digits\n")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path, checkpoint, resources={"executor": "ray", "cpus_per_stage": 1},
                                                      tracking={"experiment": "recipe"})))
    script = _recipe()
    worker = [line for line in script.splitlines() if line.startswith("ray start --address=")]
    assert len(worker) == 1
    script = script.replace(worker[0], "")
    for documented, here in (("<head-ip>", "127.0.0.1"), ("6379", str(_free_port())), ("/shared", str(shared)),
                             ("http://<mlflow-host>:5000", f"sqlite:///{tmp_path / 'mlflow.db'}"), (PAPER_CONFIG, str(config))):
        assert documented in script, documented
        script = script.replace(documented, here)
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
        assert json.loads(run_json.read_text())["config"]["backbone"]["checkpoint"] == str(checkpoint)
    finally:
        _stop_cluster(ray_tmp)
        shutil.rmtree(shared, ignore_errors=True)
