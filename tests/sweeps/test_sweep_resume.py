"""A sweep whose driver is SIGKILLed mid-way resumes: finished trials are not re-run, the running
trial continues from its last finished stage, and the Optuna study keeps every finished trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sweep_fixtures import (  # noqa: F401 (fixtures)
    start_ray,
    sweep_checkpoint,
    sweep_mlflow_uri,
    tiny_sweep_dict,
)

pytestmark = pytest.mark.ray

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _stage_starts(run_dir: Path) -> Counter:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return Counter(e["stage"] for e in events if e["event"] == "start")


def _is_done(run_dir: Path, stage: str) -> bool:
    from pipeline.running.state import RunDir, StageKey

    key = StageKey.split() if stage == "split" else StageKey(int(stage[8:11]), stage.split("/")[1])
    return RunDir(run_dir).is_done(key)


def _state(sweep) -> tuple[list[str], dict[str, int]]:
    """(trials the Optuna study records complete, {unfinished trial: eval stages done})."""
    from optuna.trial import TrialState

    from pipeline.running.state import RunDir, StageKey
    from sweeps.tuner import TUNE_TRIAL_ATTR, open_study

    study = open_study(sweep)
    states = {t.user_attrs.get(TUNE_TRIAL_ATTR): t.state for t in study.trials} if study else {}
    complete, partial = [], {}
    for trial_dir in (sweep.dir / "trials").glob("*"):
        run_dir = next(trial_dir.glob("tiny-*"), None)
        evals = sum(RunDir(run_dir).is_done(StageKey(s, "eval")) for s in range(3)) if run_dir else 0
        if states.get(trial_dir.name) == TrialState.COMPLETE:
            complete.append(trial_dir.name)
        else:
            partial[trial_dir.name] = evals
    return complete, partial


def _recorded_by_tune(sweep, trial_id: str) -> bool:
    """Ray Tune's experiment snapshot lists the trial (so a restore knows it)."""
    return any(trial_id in p.read_text() for p in sweep.dir.glob("experiment_state-*.json"))


def test_killed_sweep_resumes_without_rerunning_finished_work(tmp_path, sweep_checkpoint, sweep_mlflow_uri):  # noqa: F811
    import ray
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from sweeps.config import sweep_from_dict
    from sweeps.tuner import open_study, run_sweep

    data = tiny_sweep_dict(tmp_path, sweep_checkpoint, {"num_samples": 3, "max_concurrent": 1},
                           train={"epochs": 6}, tracking={"experiment": "sweep-tests-resume", "uri": sweep_mlflow_uri})
    (tmp_path / "sweep.json").write_text(json.dumps(data))
    sweep = sweep_from_dict(data)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, str(HERE / "sweep_kill_driver.py"), str(tmp_path / "sweep.json")],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:  # wait for: one trial complete, the next one between tasks and known to Tune
            complete, partial = _state(sweep)
            running = [t for t, evals in partial.items() if 0 < evals < 3 and _recorded_by_tune(sweep, t)]
            if complete and running:
                break
            assert driver.poll() is None, "the sweep ended before it could be killed:\n" + (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "timed out waiting for the sweep"
            time.sleep(0.05)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        driver.wait()
    interrupted = running[0]
    finished_before = set(complete)
    study_before = {t.user_attrs["tune_trial_id"]: t for t in open_study(sweep).trials}
    assert all(study_before[t].state == TrialState.COMPLETE for t in finished_before)
    starts_before, done_before = {}, {}
    for events in (sweep.dir / "trials").glob("*/*/events.jsonl"):
        trial_id = events.parent.parent.name
        starts_before[trial_id] = _stage_starts(events.parent)
        done_before[trial_id] = {stage for stage in starts_before[trial_id] if _is_done(events.parent, stage)}

    start_ray(2)
    try:
        outcome = run_sweep(sweep, resume=True, verbose=0)
    finally:
        ray.shutdown()

    assert outcome.complete
    table = outcome.summary.table.set_index("trial_id")
    assert len(table) == 3 and set(table["status"]) == {"complete"}
    assert finished_before | {interrupted} <= set(table.index)
    for trial_id, before in starts_before.items():
        after = _stage_starts(next((sweep.dir / "trials" / trial_id).glob("tiny-*")))
        if trial_id in finished_before:
            assert after == before, f"finished trial {trial_id} ran stages again: {after - before}"
        rerun = {stage for stage in done_before[trial_id] if after[stage] != before[stage]}
        assert not rerun, f"trial {trial_id} re-ran stages finished before the kill: {rerun}"
    assert {"split", "session_000/eval"} <= done_before[interrupted]

    study = {t.user_attrs["tune_trial_id"]: t for t in open_study(sweep).trials}
    for trial_id in finished_before:  # kept, with the same value
        assert study[trial_id].state == TrialState.COMPLETE
        assert study[trial_id].value == pytest.approx(study_before[trial_id].value)
    assert study[interrupted].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in study.values()) == 3

    client = MlflowClient(tracking_uri=sweep_mlflow_uri)
    exp = [client.get_run(outcome.parent_run_id).info.experiment_id]
    children = client.search_runs(exp, f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    assert sorted(c.data.tags["sweep.trial_id"] for c in children) == sorted(table.index)  # same runs reopened
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "acc/val/task_000")]
        assert steps == [0, 1, 2], "a stage was logged twice or not at all"
