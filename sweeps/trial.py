"""One trial of a sweep: a task-sequence run per seed, reported to Ray Tune after every task.

The trainable is a plain function of the sampled parameters (Ray Tune's function
API). It runs the foundation pipeline (:func:`pipeline.running.runner.execute`) with
every stage in its own worker process, so a trial holds exactly the resources
Ray Tune reserved for it and never waits on the cluster for nested tasks. After
each task it reports, on the validation split only::

    objective   mean over seeds of the average accuracy so far (the searcher's metric)
    val_acc     mean over seeds of the accuracy after this task
    tasks_done  tasks finished: the time attribute of ASHA and Optuna's step

The test split is evaluated by the eval stage (the foundation run logs it to
MLflow) but nothing here reads it: :func:`validation_objective` takes the
validation rows only, and the report carries no test number.

State lives in the trial's run directories (stage markers), so a trial restarted
by ``Tuner.restore`` or ``FailureConfig`` continues from its last finished stage;
the Tune checkpoint only records how many tasks were already reported.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model.methods import StepResult
from pipeline.config import updated
from pipeline.running.runner import execute, make_specs
from pipeline.running.scheduler import LocalExecutor
from pipeline.running.stages import RunSpec
from pipeline.running.state import StageKey
from pipeline.tracking import metric_keys as mk

from .config import Sweep

__all__ = [
    "METRIC",
    "REPORTED_KEYS",
    "TIME_ATTR",
    "SessionOrderExecutor",
    "TaskReporter",
    "run_trial",
    "validation_objective",
]

METRIC = mk.OBJECTIVE
TIME_ATTR = "tasks_done"
REPORTED_KEYS = (METRIC, mk.VAL_ACC, TIME_ATTR)
_PROGRESS_FILE = "progress.json"


class SessionOrderExecutor(LocalExecutor):
    """In-process executor that runs the seeds of a trial task by task.

    :class:`~pipeline.running.scheduler.LocalExecutor` runs stages in submission order,
    which is seed after seed; a multi-seed trial must finish task ``s`` on every
    seed before it can report task ``s``, so the queue is kept ordered by session
    (stable: within a session, the runs keep their order and stages their plan order).
    """

    def submit(self, spec: RunSpec, key: StageKey, upstream: Sequence[Any]):
        handle = super().submit(spec, key, upstream)
        self.queue.sort(key=lambda h: h.key.session)
        return handle


def validation_objective(rows: Sequence[Mapping[int, float]]) -> tuple[float, float]:
    """Average and last accuracy of one run on validation, from its eval rows.

    Args:
        rows: per finished session ``s``, ``{task: validation accuracy after s}``
            over the tasks seen so far (the ``"val"`` entry of the eval stage).

    Returns:
        (average accuracy: mean over sessions of the task-mean accuracy after
        each session, as in the paper; accuracy after the last session).
    """
    if not rows or any(not row for row in rows):
        raise ValueError("validation_objective needs a non-empty validation row per session (data.val_fraction > 0)")
    after = [sum(row.values()) / len(row) for row in rows]
    return sum(after) / len(after), after[-1]


class TaskReporter:
    """Collects the eval stages' validation rows and reports once every seed has finished a task.

    Args:
        seeds: the trial's seeds.
        report: called with the metrics dict (``REPORTED_KEYS``) after each task.
        already_reported: tasks reported before a restart; they are not reported again.
    """

    def __init__(self, seeds: Sequence[int], report, already_reported: int = 0) -> None:
        self.rows: dict[int, dict[int, dict[int, float]]] = {int(s): {} for s in seeds}
        self.report = report
        self.reported = already_reported
        self.history: list[dict[str, float]] = []

    def on_stage(self, spec: RunSpec, key: StageKey, result: StepResult) -> None:
        """``on_stage`` hook of :func:`pipeline.running.runner.execute`: reads the validation row only."""
        if result.eval is None:
            return
        self.rows[spec.seed][key.session] = result.val_row()
        while all(len(self.history) in rows for rows in self.rows.values()):
            s = len(self.history)
            per_seed = [validation_objective([rows[i] for i in range(s + 1)]) for rows in self.rows.values()]
            metrics = {
                METRIC: _mean(avg for avg, _ in per_seed),
                mk.VAL_ACC: _mean(last for _, last in per_seed),
                TIME_ATTR: s + 1,
            }
            self.history.append(metrics)
            if s + 1 > self.reported:
                self.report(metrics)
                self.reported = s + 1


def _mean(values) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


def run_trial(params: dict[str, Any], sweep: Sweep) -> None:
    """Ray Tune trainable: run the sweep's base config with ``params`` on every seed.

    Args:
        params: the sampled values, keyed by parameter name (``rank``, ``lamb``…).
        sweep: the sweep (bound with ``tune.with_parameters``).
    """
    from ray import tune

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not a line per checkpoint (one per task)
    trial_id = tune.get_context().get_trial_id()
    cfg = sweep.trial_config(params, trial_id)
    # The driver logs every stage to MLflow from the run directories; the trial does not.
    cfg = updated(cfg, {"tracking.enabled": False})
    reporter = TaskReporter(cfg.seeds, _report_with_checkpoint, already_reported=_reported_before(tune.get_checkpoint()))
    execute(make_specs(cfg), executor=SessionOrderExecutor(), progress=False, on_stage=reporter.on_stage)


def _report_with_checkpoint(metrics: dict[str, float]) -> None:
    from ray import tune

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, _PROGRESS_FILE).write_text(json.dumps({TIME_ATTR: metrics[TIME_ATTR]}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _reported_before(checkpoint) -> int:
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as path:
        return int(json.loads(Path(path, _PROGRESS_FILE).read_text())[TIME_ATTR])
