"""Re-running a finished run logs nothing again; an interrupted run ends KILLED and resumes clean;
a failing stage ends with one line (its traceback only with ``--verbose``)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config_dict

from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.running.runner import make_specs

ROOT = Path(__file__).resolve().parents[3]


def _write(tmp_path, cfg) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _rows(db: Path) -> tuple[int, int]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0], con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    finally:
        con.close()


def test_rerun_of_a_finished_run_logs_and_uploads_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2}))
    assert main(["run", str(path), "--no-progress"]) == 0
    before = _rows(tmp_path / "mlflow.db")
    artifacts = {p: p.stat().st_mtime_ns for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file()}
    assert artifacts and before[1] == 1
    assert main(["run", str(path), "--no-progress"]) == 0
    assert _rows(tmp_path / "mlflow.db") == before
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file()} == artifacts


def test_ctrl_c_exits_130_marks_killed_and_the_resume_drops_the_error(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    from mlflow import MlflowClient

    cfg = tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2})
    path = _write(tmp_path, cfg)
    from model.methods.base import ContinualMethod

    real_eval = ContinualMethod.step_eval

    def interrupted(self, ctx):
        if ctx.session == 1:
            raise KeyboardInterrupt
        return real_eval(self, ctx)

    monkeypatch.setattr(ContinualMethod, "step_eval", interrupted)
    assert main(["run", str(path), "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err  # (MLflow may log its store creation above)
    assert err.splitlines()[-1] == "inflora: interrupted; finished stages are kept: re-run the same command to resume"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["error"].startswith("interrupted")

    monkeypatch.setattr(ContinualMethod, "step_eval", real_eval)
    assert main(["run", str(path), "--no-progress"]) == 0
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    (spec,) = make_specs(config_from_dict(cfg))
    assert Path(spec.run_dir, "session_001", "eval.done.json").is_file()


@pytest.mark.slow
def test_a_failing_stage_is_one_line_and_the_traceback_needs_verbose(tmp_path, tiny_checkpoint):
    # rank 30 of 32 fits the first task, not the second once the memory holds > 2 directions
    cfg = tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2}, method={"name": "inflora", "rank": 30, "lamb": 0.999},
                           tracking={"enabled": False})  # fmt: skip
    path = _write(tmp_path, cfg)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    for verbose in ([], ["-v"]):
        out = subprocess.run([sys.executable, "-m", "pipeline.cli", *verbose, "run", str(path), "--no-progress"],
                             env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 2, out.stderr[-3000:]
        assert "session_001/design: SubspaceError: LoRA rank 30 is larger than the" in out.stderr, out.stderr[-3000:]
        assert ("Traceback" in out.stderr) == bool(verbose), out.stderr[-3000:]
        if not verbose:
            assert len(out.stderr.strip().splitlines()) <= 3, out.stderr  # the summary line and one line per failed run


def test_pretrained_backbone_without_hub_is_one_line(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2}, tracking={"enabled": False})
    cfg["backbone"] = {**cfg["backbone"], "pretrained": True, "checkpoint": None}
    assert main(["run", str(_write(tmp_path, cfg)), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "could not be fetched from the Hugging Face hub" in err and "set backbone.checkpoint to a local weights file" in err


@pytest.mark.slow
def test_sigterm_ends_the_command_with_130_and_its_run_killed(tmp_path, tiny_checkpoint):
    import signal
    import time

    from mlflow import MlflowClient

    cfg = tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2}, train={"epochs": 40})
    path = _write(tmp_path, cfg)
    (spec,) = make_specs(config_from_dict(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(path), "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not Path(spec.run_dir, "session_000", "train_checkpoint.pt").is_file():  # training, its MLflow run open
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("inflora: interrupted") and "Traceback" not in err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "KILLED"
