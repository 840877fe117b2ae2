"""Which Ray cluster ``init_ray`` joins when ``RAY_ADDRESS`` is unset.

``ray start`` records its address in ``<ray temp dir>/ray_current_cluster``, and
``ray.init()`` without an address connects there — raising a bare ``ValueError``
when given ``num_cpus``, and failing as well when the file outlived its cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.running import scheduler

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.ray
def test_a_stale_cluster_record_is_ignored_with_a_warning():
    # short: Ray's unix sockets live under the temp dir (107-byte limit)
    tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    try:
        (tmp / "ray").mkdir()
        (tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")  # nothing listens on port 1
        code = (
            "import ray; from pipeline.running.scheduler import init_ray\n"
            "init_ray(1)\n"
            "print('CPUS', ray.cluster_resources().get('CPU'))\n"
            "ray.shutdown()\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env.update(RAY_TMPDIR=str(tmp), PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "CPUS 1.0" in done.stdout
        assert "ignoring a stale Ray cluster record" in done.stderr and "127.0.0.1:1" in done.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_live_cluster_started_with_ray_start_is_joined(monkeypatch, caplog):
    """Joined without ``num_cpus`` (which Ray refuses for an existing cluster), and said."""
    import ray

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(scheduler, "_last_started_cluster", lambda: "10.0.0.5:6379")
    monkeypatch.setattr(scheduler, "_answers", lambda address: True)
    scheduler.init_ray(4)
    assert calls == [{"address": "10.0.0.5:6379", "log_to_driver": True}]
    assert "started with `ray start` at 10.0.0.5:6379" in caplog.text and "RAY_ADDRESS=local" in caplog.text


def test_a_cluster_that_refuses_says_what_to_do(monkeypatch):
    import ray

    def refuse(**kwargs):
        raise ValueError("When connecting to an existing cluster, num_cpus and num_gpus must not be provided.")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(scheduler, "_last_started_cluster", lambda: "10.0.0.5:6379")
    monkeypatch.setattr(scheduler, "_answers", lambda address: True)
    with pytest.raises(ConnectionError, match=r"cannot connect to the Ray cluster at 10\.0\.0\.5:6379 .*RAY_ADDRESS=local"):
        scheduler.init_ray(4)


@pytest.mark.ray
def test_a_killed_drivers_cluster_leaves_nothing_after_the_next_start():
    """SIGKILL takes the driver's raylet and GCS along, but the raylet's agents linger for a
    minute or two (blocked on the dead GCS); the next local start stops them."""
    import json
    import signal
    import time

    import psutil

    tmp = Path(tempfile.mkdtemp(prefix="rk-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(tmp), PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    start = "from pipeline.running.scheduler import init_ray; import ray, time\ninit_ray(1)\nprint('UP', flush=True)\n"
    driver = subprocess.Popen([sys.executable, "-c", start + "time.sleep(600)"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "UP"
        (record,) = [p for p in tmp.glob("ray/session_*/inflora_local_cluster.json") if not p.parent.is_symlink()]
        processes = json.loads(record.read_text())["processes"]
        assert processes
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
        again = subprocess.run([sys.executable, "-c", start + "ray.shutdown()"], env=env, capture_output=True, text=True, timeout=180)
        assert again.returncode == 0, again.stderr[-3000:]
        time.sleep(1)
        alive = [pid for pid, created in processes if psutil.pid_exists(pid) and abs(psutil.Process(pid).create_time() - created) < 1e-3]
        assert not alive, [psutil.Process(p).name() for p in alive]
        assert not record.exists()
    finally:
        driver.kill()
        shutil.rmtree(tmp, ignore_errors=True)
