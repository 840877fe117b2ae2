"""ASHA stops a trial forced to be bad after its first task; a 2-seed sweep optimises the mean."""

from __future__ import annotations

import pytest
from sweep_fixtures import start_ray, sweep_checkpoint, sweep_mlflow_uri, tiny_sweep  # noqa: F401 (fixtures)

pytestmark = pytest.mark.ray

GOOD = {"rank": 4, "lr": 1e-2}
BAD = {"rank": 4, "lr": 1e-7}  # the heads barely move: chance-level accuracy after the first task


def test_asha_stops_the_bad_trial_and_seeds_are_averaged(tiny_sweep):  # noqa: F811
    import ray
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from pipeline.running.runner import make_specs
    from pipeline.running.stages import read_result
    from pipeline.running.state import RunDir, StageKey
    from sweeps.trial import validation_objective
    from sweeps.tuner import open_study, run_sweep

    sweep = tiny_sweep(
        {
            "num_samples": 2,
            "max_concurrent": 1,  # the good trial reaches the first rung first
            "seeds": [0, 1],
            "space": {"rank": {"low": 1, "high": 8}, "lr": {"low": 1e-7, "high": 1e-1, "log": True}},
            "enqueue": [GOOD, BAD],
            "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        }
    )
    start_ray(2)
    try:
        outcome = run_sweep(sweep, verbose=0)
    finally:
        ray.shutdown()

    table = outcome.summary.table.set_index("lr")
    good, bad = table.loc[GOOD["lr"]], table.loc[BAD["lr"]]
    assert good["status"] == "complete" and good["tasks_done"] == 3
    assert bad["status"] == "stopped" and bad["tasks_done"] == 1
    assert bad["objective"] < good["objective"]
    assert outcome.summary.best["trial_id"] == good["trial_id"]

    study = {t.params["lr"]: t for t in open_study(sweep).trials}
    assert study[BAD["lr"]].state == TrialState.PRUNED  # not COMPLETE with a one-task value
    assert study[GOOD["lr"]].state == TrialState.COMPLETE

    # the objective is the mean over both seeds of each seed's validation average accuracy
    cfg = sweep.trial_config(GOOD, good["trial_id"])
    per_seed = []
    for spec in make_specs(cfg):
        rows = [read_result(RunDir(spec.run_dir), StageKey(s, "eval")).val_row() for s in range(3)]
        per_seed.append(validation_objective(rows)[0])
    assert len(per_seed) == 2
    assert study[GOOD["lr"]].value == pytest.approx(sum(per_seed) / 2)

    # MLflow: per trial a trial run under the parent, the seeds' runs under it
    client = MlflowClient(tracking_uri=sweep.base.tracking.uri)
    exp = [client.get_run(outcome.parent_run_id).info.experiment_id]
    trials = client.search_runs(exp, f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    assert len(trials) == 2
    by_status = {t.data.tags["sweep.status"]: t for t in trials}
    assert by_status["stopped"].info.status == "KILLED" and by_status["complete"].info.status == "FINISHED"
    for trial in trials:
        seeds = client.search_runs(exp, f"tags.mlflow.parentRunId = '{trial.info.run_id}'")
        assert sorted(int(s.data.tags["seed"]) for s in seeds) == [0, 1]
    complete = by_status["complete"]
    assert complete.data.metrics["trial/val_avg_acc"] == pytest.approx(sum(per_seed) / 2)
