"""The driver callback keeps a record per trial (with or without MLflow); the summary reads them."""

from __future__ import annotations

from types import SimpleNamespace

from sweep_fixtures import tiny_sweep_dict

from sweeps.config import sweep_from_dict
from sweeps.results import read_trial, summarize_sweep
from sweeps.tracking import SweepCallback


def _trial(trial_id: str, **params):
    return SimpleNamespace(trial_id=trial_id, config=params, last_result={}, local_path=None)


def test_trial_records_without_mlflow(tmp_path):
    sweep = sweep_from_dict(tiny_sweep_dict(tmp_path, tmp_path / "w.safetensors", tracking={"enabled": False}))
    callback = SweepCallback(sweep, track=False)
    a, b, c = _trial("aaa", rank=2, lamb=0.9), _trial("bbb", rank=3, lamb=0.95), _trial("ccc", rank=4, lamb=0.85)
    for trial in (a, b, c):
        callback.on_trial_start(0, [], trial)
    assert [read_trial(sweep, t.trial_id)["number"] for t in (a, b, c)] == [0, 1, 2]
    assert read_trial(sweep, "aaa") | {"params": None} == {"trial_id": "aaa", "number": 0, "params": None, "seeds": [0], "status": "running"}

    callback.on_trial_complete(0, [], a)  # no task finished: stopped, not complete
    callback.on_trial_error(0, [], b)
    callback.on_experiment_end([a, b])  # c was never recorded by Tune: lost
    assert [read_trial(sweep, t.trial_id)["status"] for t in (a, b, c)] == ["stopped", "error", "lost"]
    assert read_trial(sweep, "aaa")["tasks_done"] == 0

    summary = summarize_sweep(sweep)
    assert list(summary.table["trial_id"]) == ["aaa", "bbb", "ccc"]
    assert list(summary.table["rank"]) == [2, 3, 4]
    assert summary.best is None
    assert not (tmp_path / "mlflow.db").exists()


def test_best_with_set_reports_the_sweep_as_it_ran(tmp_path, capsys):
    """``--set train.epochs=1`` with ``--best``: the trials' run directories are those of the
    recorded sweep (3 epochs); the summary reads that sweep and never crashes on trials whose
    runs are not found (before: ``ValueError: Encountered all NA values``)."""
    import yaml

    from pipeline.cli import main
    from sweeps.config import SWEEP_FILE
    from sweeps.results import write_trial

    data = tiny_sweep_dict(tmp_path, tmp_path / "w.safetensors", tracking={"enabled": False})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    sweep = sweep_from_dict(data)
    sweep.dir.mkdir(parents=True)
    (sweep.dir / SWEEP_FILE).write_text(yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    write_trial(sweep, "aaa", params={"rank": 2, "lamb": 0.9}, seeds=[0], status="complete")  # its runs are gone

    assert main(["sweep", str(path), "--best", "--set", "train.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert f"note: {sweep.dir} ran with train.epochs=3; reporting the sweep as it ran" in out
    assert "runs missing" in out and "no trial has finished every task yet" in out
