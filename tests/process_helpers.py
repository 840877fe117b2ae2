"""Helpers for tests that start real server processes."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM a server's process group, wait up to ``grace_s``, then SIGKILL what is left.

    Servers started with ``start_new_session=True`` leave helpers behind when only their
    own PID is killed (MLflow's uvicorn workers, Ray's GCS, raylet and agents); and
    ``ray stop`` would stop every Ray cluster of this user on the machine.
    """
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
