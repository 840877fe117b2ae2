"""A 4-trial sweep of the tiny config on a 2-CPU local Ray cluster, 2 trials at a time.

One sweep (module fixture) is checked for: every trial finishing, trials really
running concurrently, the MLflow parent run with one child per trial, the
searcher seeing validation numbers only, and the ``--best`` / report commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sweep_fixtures import (  # noqa: F401 (fixtures)
    start_ray,
    sweep_checkpoint,
    sweep_mlflow_uri,
    tiny_sweep_dict,
)

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, sweep_checkpoint, sweep_mlflow_uri):  # noqa: F811
    """Run the sweep once, recording every result the search algorithm receives."""
    import ray
    from ray.tune.search import ConcurrencyLimiter

    from sweeps.config import sweep_from_dict
    from sweeps.tuner import run_sweep

    tmp = tmp_path_factory.mktemp("sweep")
    data = tiny_sweep_dict(tmp, sweep_checkpoint, {"num_samples": 4, "max_concurrent": 2},
                           tracking={"experiment": "sweep-tests", "uri": sweep_mlflow_uri})
    sweep = sweep_from_dict(data)
    seen: list[tuple[str, str, dict]] = []
    with pytest.MonkeyPatch.context() as mp:
        for hook in ("on_trial_result", "on_trial_complete"):
            original = getattr(ConcurrencyLimiter, hook)

            def spy(self, trial_id, result=None, *args, _hook=hook, _original=original, **kwargs):
                seen.append((_hook, trial_id, dict(result or {})))
                return _original(self, trial_id, result, *args, **kwargs)

            mp.setattr(ConcurrencyLimiter, hook, spy)
        start_ray(2)
        try:
            outcome = run_sweep(sweep, verbose=0)
        finally:
            ray.shutdown()
    return sweep, outcome, seen


def _intervals(sweep) -> list[tuple[float, float]]:
    out = []
    for events in sorted((sweep.dir / "trials").glob("*/*/events.jsonl")):
        times = [json.loads(line)["time"] for line in events.read_text().splitlines()]
        out.append((min(times), max(times)))
    return out


def test_four_trials_finish_two_at_a_time_on_two_cpus(finished_sweep):
    sweep, outcome, _ = finished_sweep
    assert outcome.complete
    table = outcome.summary.table
    assert len(table) == 4 and set(table["status"]) == {"complete"} and set(table["tasks_done"]) == {3}
    spans = _intervals(sweep)
    overlapping = sum(1 for i, a in enumerate(spans) for b in spans[i + 1:] if a[0] < b[1] and b[0] < a[1])
    assert overlapping >= 1, f"no two trials ran at the same time: {spans}"
    assert (sweep.dir / "trials.csv").is_file() and (sweep.dir / "best_config.yaml").is_file()


def test_parent_run_has_one_child_per_trial_with_per_task_metrics(finished_sweep):
    from mlflow import MlflowClient

    sweep, outcome, _ = finished_sweep
    client = MlflowClient(tracking_uri=sweep.base.tracking.uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.run_name == sweep.name and parent.info.status == "FINISHED"
    assert parent.data.params["space.rank"] == "int [1, 8]"
    assert parent.data.params["space.lamb"] == "float [0.8, 0.999]"
    best = outcome.summary.best
    assert parent.data.metrics["best/val_avg_acc"] == pytest.approx(best["objective"])
    assert parent.data.metrics["best/test_avg_acc"] == pytest.approx(best["test_avg_acc"])
    assert parent.data.tags["best.rerun_command"].startswith("inflora run ")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)} | {
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")
    }
    assert {"trials.csv", "sweep.yaml", "best_config.yaml", "plots/objective_vs_params.png", "plots/search_history.png"} <= artifacts

    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4
    assert {c.data.tags["sweep.trial_id"] for c in children} == set(outcome.summary.table["trial_id"])
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["sweep.status"] == "complete"
        for name in ("acc/val/task_000", "acc/test/task_000", "objective"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, name)] == [0, 1, 2], name
        assert {"final/avg_acc_task_mean", "final/val_avg_acc_task_mean", "trial/test_avg_acc"} <= set(child.data.metrics)
        rank_key = next(p.key for p in sweep.space.params if p.name == "rank")  # method.inflora.rank
        assert child.data.params[rank_key] == str(outcome.summary.table.set_index("trial_id").loc[child.data.tags["sweep.trial_id"], "rank"])


def test_the_search_sees_validation_numbers_only(finished_sweep):
    from sweeps.tuner import open_study

    sweep, outcome, seen = finished_sweep
    assert seen, "the spy saw no result"
    for hook, trial_id, result in seen:
        assert not [k for k in result if "test" in k.lower()], (hook, result)
    table = outcome.summary.table.set_index("trial_id")
    finals = {trial_id: r["objective"] for hook, trial_id, r in seen if hook == "on_trial_complete"}
    assert set(finals) == set(table.index)
    for trial_id, value in finals.items():  # what the searcher got = validation, recomputed from the run dirs
        assert value == pytest.approx(table.loc[trial_id, "objective"])
    assert any(abs(table.loc[t, "objective"] - table.loc[t, "test_avg_acc"]) > 1e-6 for t in table.index)
    study = {t.user_attrs["tune_trial_id"]: t.value for t in open_study(sweep).trials}
    assert study == pytest.approx(finals)


def test_best_command_and_report(finished_sweep, capsys):
    from pipeline.cli import main
    from pipeline.config import load_config
    from sweeps.cli import print_mlflow_sweep

    sweep, outcome, _ = finished_sweep
    assert main(["sweep", "--best", str(sweep.dir)]) == 0
    out = capsys.readouterr().out
    best = outcome.summary.best
    assert f"best configuration (trial {best['trial_id']})" in out
    assert f"inflora run {sweep.dir / 'best_config.yaml'} --seeds 1 2 3 4 5" in out
    assert "<- reported only" in out
    cfg = load_config(sweep.dir / "best_config.yaml")
    assert (cfg.method.config.rank, cfg.method.config.lamb) == (best["rank"], pytest.approx(best["lamb"]))
    assert cfg.seeds == [1, 2, 3, 4, 5] and Path(cfg.output_dir) == Path(sweep.base.output_dir)

    assert print_mlflow_sweep(sweep.name, tracking_uri=sweep.base.tracking.uri) == 0
    out = capsys.readouterr().out
    assert outcome.parent_run_id in out and f"best configuration (trial {best['trial_id']})" in out
