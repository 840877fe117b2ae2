"""One driver per run directory; a fresh sqlite store shared by runs and sweeps."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_config_dict

from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.running.lock import RunLockedError, run_lock
from pipeline.running.runner import make_specs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)])
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def test_lock_is_exclusive_and_released(tmp_path):
    with run_lock(tmp_path / "r") as path:
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"]
        with pytest.raises(RunLockedError, match=f"in use by pid {os.getpid()} on "):
            with run_lock(tmp_path / "r"):
                pass
    with run_lock(tmp_path / "r"):  # released when the block ends
        pass


def test_second_driver_of_a_run_dir_fails_at_once_naming_the_first(tmp_path, tiny_checkpoint, capsys):
    cfg = tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2})
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))
    (spec,) = make_specs(config_from_dict(cfg))
    code = f"from pipeline.running.lock import run_lock\nimport time\nwith run_lock({spec.run_dir!r}):\n    print('held', flush=True)\n    time.sleep(120)\n"
    holder = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        assert main(["run", str(path), "--no-progress"]) == 2
        assert time.monotonic() - started < 5
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"is in use by pid {holder.pid} on " in err and " -c " in err
        assert not (tmp_path / "mlflow.db").exists(), "the refused command must not touch the MLflow store"
        assert not Path(spec.run_dir, "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock went with it, and the same command runs
    assert main(["run", str(path), "--no-progress"]) == 0


def test_fresh_sqlite_store_shared_by_runs_and_sweeps_at_once(tmp_path):
    """Four drivers (two runs, two sweeps with nested runs) create one fresh store at the
    same instant and log to it: none fails in the migration, nothing is lost."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    n = 20
    start_at = time.time() + 12  # after every worker has imported mlflow and torch
    kinds = ["run", "sweep", "run", "sweep"]
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "store_worker.py"), uri, "shared", str(start_at), kind, str(n)],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for kind in kinds
    ]  # fmt: skip
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-2000:] for o in outputs)
    db = sqlite3.connect(tmp_path / "mlflow.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (experiments,) = db.execute("SELECT COUNT(*) FROM experiments WHERE name = 'shared'").fetchone()
        assert experiments == 1
        runs = db.execute("SELECT run_uuid, status FROM runs").fetchall()
        assert len(runs) == 2 * 1 + 2 * 3 and {s for _, s in runs} == {"FINISHED"}
        counts = db.execute("SELECT run_uuid, COUNT(*), COUNT(DISTINCT step) FROM metrics GROUP BY run_uuid").fetchall()
        assert sorted(c[1:] for c in counts) == [(n, n)] * len(runs)
    finally:
        db.close()
