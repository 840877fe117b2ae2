"""Ray Tune keeps the trials' books: a trial's status is Tune's, read against its run directories;
the driver callback writes no record of its own (with or without MLflow)."""

from __future__ import annotations

from types import SimpleNamespace

from sweep_fixtures import tiny_sweep_dict

from sweeps.config import sweep_from_dict
from sweeps.results import summarize_sweep, trial_status
from sweeps.tracking import SweepCallback


def test_trial_status_is_tunes_read_against_the_tasks_done():
    assert trial_status("TERMINATED", 3, 3) == "complete"
    assert trial_status("TERMINATED", 1, 3) == "stopped"  # ended early: the scheduler stopped it
    assert trial_status("ERROR", 3, 3) == "error"
    assert trial_status("RUNNING", 3, 3) == "complete"  # every task done, Tune not told yet (a killed driver)
    assert trial_status("RUNNING", 1, 3) == "running"
    assert trial_status("PENDING", 0, 3) == "running"


def test_callback_without_mlflow_keeps_no_books(tmp_path):
    sweep = sweep_from_dict(tiny_sweep_dict(tmp_path, tmp_path / "w.safetensors", tracking={"enabled": False}))
    callback = SweepCallback(sweep, track=False)
    trials = [SimpleNamespace(trial_id=t, config={"rank": 2, "lamb": 0.9}, last_result={}, local_path=None) for t in ("aaa", "bbb")]
    for trial in trials:
        callback.on_trial_start(0, trials, trial)
    callback.on_trial_complete(0, trials, trials[0])
    callback.on_trial_error(0, trials, trials[1])
    assert not sweep.dir.exists() and not (tmp_path / "mlflow.db").exists()
    summary = summarize_sweep(sweep)  # no Tune experiment yet: no trials
    assert summary.table.empty and summary.best is None


def test_best_with_set_reports_the_sweep_as_it_ran(tmp_path, capsys, monkeypatch):
    """``--set train.epochs=1`` with ``--best``: the trials' run directories are those of the
    recorded sweep (3 epochs); the summary reads that sweep and never crashes on trials whose
    runs are not found (before: ``ValueError: Encountered all NA values``)."""
    import yaml

    from pipeline.cli import main
    from sweeps.config import SWEEP_FILE
    from sweeps import results

    data = tiny_sweep_dict(tmp_path, tmp_path / "w.safetensors", tracking={"enabled": False})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    sweep = sweep_from_dict(data)
    sweep.dir.mkdir(parents=True)
    (sweep.dir / SWEEP_FILE).write_text(yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    # Tune's books: a trial that reported every task; its runs are gone
    monkeypatch.setattr(results, "tune_trials", lambda _: [results.TuneTrial("aaa", {"rank": 2, "lamb": 0.9}, "TERMINATED", reported=3)])

    assert main(["sweep", str(path), "--best", "--set", "train.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert f"note: {sweep.dir} ran with train.epochs=3; reporting the sweep as it ran" in out
    assert "runs missing" in out and "no trial has finished every task yet" in out
