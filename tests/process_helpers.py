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


HEAVY_MODULES = ("torch", "timm", "ray", "mlflow")
"""What validating a config or reading results must not import (seconds each)."""


def heavy_imports_of(code: str, cwd: str | None = None) -> list[str]:
    """The modules of :data:`HEAVY_MODULES` that running ``code`` in a fresh interpreter imports.

    A fresh process, because the test process has imported them all already.
    """
    import json
    import sys

    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])
