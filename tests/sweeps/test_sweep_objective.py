"""The objective the search sees: validation only, reported after each task; the searcher's bookkeeping."""

from __future__ import annotations

import pytest
from sweep_fixtures import tiny_sweep_dict

from model.methods import StepResult
from pipeline.running.state import StageKey
from sweeps.trial import (
    REPORTED_KEYS,
    SessionOrderExecutor,
    TaskReporter,
    validation_objective,
)


class _PoisonedRow:
    """An eval row whose test-split fields fail the test if anything reads them."""

    def __init__(self, task: int, val: float) -> None:
        self.task, self.val = task, val

    def _fail(self):
        raise AssertionError("the objective read the test split")

    test = count = extra = property(_fail)


class _Spec:
    def __init__(self, seed: int) -> None:
        self.seed = seed


def _eval(val: dict[int, float]) -> StepResult:
    return StepResult(eval=[_PoisonedRow(t, v) for t, v in val.items()])


def test_validation_objective_is_the_average_accuracy_over_sessions():
    rows = [{0: 0.9}, {0: 0.7, 1: 0.9}, {0: 0.5, 1: 0.6, 2: 1.0}]
    avg, last = validation_objective(rows)
    assert last == pytest.approx(0.7)
    assert avg == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    with pytest.raises(ValueError, match="non-empty validation row"):
        validation_objective([{0: 0.9}, {}])


def test_reporter_reads_validation_only_and_waits_for_every_seed():
    reports = []
    reporter = TaskReporter([0, 1], reports.append)
    reporter.on_stage(_Spec(0), StageKey(0, "train"), StepResult(epochs=[]))  # not an eval: ignored
    reporter.on_stage(_Spec(0), StageKey(0, "eval"), _eval({0: 0.8}))
    assert reports == []  # seed 1 has not finished task 0
    reporter.on_stage(_Spec(1), StageKey(0, "eval"), _eval({0: 0.6}))
    reporter.on_stage(_Spec(0), StageKey(1, "eval"), _eval({0: 0.5, 1: 0.9}))
    reporter.on_stage(_Spec(1), StageKey(1, "eval"), _eval({0: 0.3, 1: 0.9}))
    assert [set(r) for r in reports] == [set(REPORTED_KEYS)] * 2
    assert [r["tasks_done"] for r in reports] == [1, 2]
    assert reports[0]["objective"] == pytest.approx(0.7)
    # seed 0: (0.8 + 0.7) / 2, seed 1: (0.6 + 0.6) / 2 → mean 0.675; accuracy after task 1: (0.7 + 0.6) / 2
    assert reports[1]["objective"] == pytest.approx(0.675)
    assert reports[1]["val_acc"] == pytest.approx(0.65)


def test_reporter_does_not_report_again_what_a_restarted_trial_reported():
    reports = []
    reporter = TaskReporter([0], reports.append, already_reported=1)
    reporter.on_stage(_Spec(0), StageKey(0, "eval"), _eval({0: 0.8}))  # replayed from its marker
    reporter.on_stage(_Spec(0), StageKey(1, "eval"), _eval({0: 0.6, 1: 0.8}))
    assert [r["tasks_done"] for r in reports] == [2]
    assert reports[0]["objective"] == pytest.approx(0.75)


def test_session_order_executor_runs_the_seeds_task_by_task():
    from pipeline.running.stages import RunSpec

    executor = SessionOrderExecutor()
    specs = [RunSpec(None, seed, f"/nowhere/{seed}") for seed in (0, 1)]  # type: ignore[arg-type]
    plan = [StageKey.split()] + [StageKey(s, st) for s in range(2) for st in ("design", "train", "update", "eval")]
    for spec in specs:
        for key in plan:
            executor.submit(spec, key, [])
    order = [(h.spec.seed, str(h.key)) for h in executor.queue]
    assert order[:2] == [(0, "split"), (1, "split")]
    assert order[2:6] == [(0, f"session_000/{s}") for s in ("design", "train", "update", "eval")]
    assert order[6:10] == [(1, f"session_000/{s}") for s in ("design", "train", "update", "eval")]
    assert order[10] == (0, "session_001/design")


@pytest.fixture
def searcher(tmp_path):
    from sweeps.config import sweep_from_dict
    from sweeps.tuner import create_searcher

    sweep = sweep_from_dict(tiny_sweep_dict(tmp_path, tmp_path / "w.safetensors", {"num_samples": 3}))
    return sweep, create_searcher(sweep).searcher  # inside the ConcurrencyLimiter


def test_trials_stopped_before_the_last_task_are_pruned_not_complete(searcher):
    from optuna.trial import TrialState

    from sweeps.tuner import open_study

    sweep, search = searcher
    for trial_id in ("a", "b", "c"):
        assert set(search.suggest(trial_id)) == {"rank", "lamb"}
    search.on_trial_result("a", {"objective": 0.9, "tasks_done": 1, "training_iteration": 1})
    search.on_trial_complete("a", {"objective": 0.9, "tasks_done": 1, "training_iteration": 1})  # stopped by ASHA
    search.on_trial_complete("b", {"objective": 0.6, "tasks_done": 3, "training_iteration": 3})
    search.on_trial_complete("c", None, error=True)
    trials = {t.user_attrs["tune_trial_id"]: t for t in open_study(sweep).trials}
    assert trials["a"].state == TrialState.PRUNED and trials["a"].intermediate_values == {1: 0.9}
    assert trials["b"].state == TrialState.COMPLETE and trials["b"].value == pytest.approx(0.6)
    assert trials["c"].state == TrialState.FAIL


def test_restore_fails_study_trials_the_killed_driver_never_recorded(searcher, tmp_path):
    from optuna.trial import TrialState

    from sweeps.tuner import open_study

    sweep, search = searcher
    search.suggest("a")
    search.save(str(tmp_path / "searcher.pkl"))  # Tune's last snapshot knows trial a only
    search.suggest("b")  # created after the snapshot, then the driver dies
    search.restore(str(tmp_path / "searcher.pkl"))
    states = {t.user_attrs["tune_trial_id"]: t.state for t in open_study(sweep).trials}
    assert states == {"a": TrialState.RUNNING, "b": TrialState.FAIL}

