"""MLflow logging of a sweep, from the driver only.

* one **parent run** per sweep (run name = sweep name): the search space and
  sweep settings as params, ``sweep.yaml``; at the end the best parameters and
  numbers (``best/*`` metrics, ``best.*`` tags), ``trials.csv`` and the plots;
* one **child run** per trial (tag ``mlflow.parentRunId``): with one seed it is
  the foundation run itself (:class:`pipeline.tracking.tracker.Tracker`: per-task metrics,
  accuracy matrices, adapters) plus the trial's ``objective`` and ``val_acc`` per
  task; with several seeds a trial run holds those, and the seeds' foundation
  runs nest under it.

Trials never talk to MLflow: they write their run directories, and
:class:`SweepCallback`, a Ray Tune callback in the driver, brings MLflow up to
date from there with :meth:`pipeline.tracking.tracker.Tracker.sync` as the trial reports
(the same sync the runner uses). A single writer cannot hit sqlite's "database
is locked" nor race MLflow's schema creation on a fresh database, and the
trials' workers need no network route to the tracking server. The sync is
idempotent (the run directory's ``tracking.json`` records what was logged), so a
resumed sweep reopens the same runs and logs each stage once; at the end,
:meth:`SweepTracker.close_trials` ends the trial runs a killed driver left open,
as Ray Tune's experiment state says they ended.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from pipeline.running.runner import make_specs
from pipeline.running.stages import RunSpec, init_run_dir, method_of
from pipeline.running.state import RunDir
from pipeline.tracking import metric_keys as mk
from pipeline.tracking.tracker import Tracker, package_versions

from .config import Sweep
from .results import SweepSummary, tasks_done, trial_status, validation_rows
from .trial import METRIC, TIME_ATTR, validation_objective

__all__ = ["SweepCallback", "SweepTracker", "masked_url"]

_logger = logging.getLogger(__name__)
_PARENT_FILE = "mlflow_parent.json"


def masked_url(url: str) -> str:
    """A SQLAlchemy URL without its password (for logs and MLflow)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: show nothing of it
        return "<storage URL>"


def _metrics(values: dict[str, float], step: int) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items() if v is not None and not math.isnan(float(v))]


@dataclass
class _TrialRuns:
    """The MLflow runs of one trial: the trial run and one run per seed (the same run with one seed)."""

    trial_id: str
    params: dict[str, Any]
    specs: list[RunSpec]
    run_id: str


class SweepTracker:
    """Logs a sweep to the MLflow experiment of its base config.

    Args:
        sweep: the sweep.
    """

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.tracker = Tracker(sweep.base.tracking, figures_every_stage=False)
        self.client = self.tracker.client
        self.sessions = method_of(sweep.base).sessions(sweep.base.data.num_tasks)
        self.parent_run_id: str | None = None
        self._trials: dict[str, _TrialRuns] = {}

    # ---------------------------------------------------------------- parent
    def open_parent(self) -> str:
        """Create the sweep's parent run, or reopen the one recorded in the sweep directory."""
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        state = RunDir(self.sweep.dir)
        if state.file(_PARENT_FILE).is_file():
            run_id = state.read_json(_PARENT_FILE)["run_id"]
            try:
                run = self.client.get_run(run_id)
                if run.info.lifecycle_stage == "active":
                    self.client.update_run(run_id, status="RUNNING")
                    self.parent_run_id = run_id
                    return run_id
            except MlflowException:
                pass
            _logger.warning("the sweep's MLflow parent run %s is gone; logging to a new one", run_id)
        cfg = self.sweep.config
        space = self.sweep.space.describe()
        note = (
            f"Sweep **{self.sweep.name}**: {cfg.num_samples} configurations of `{self.sweep.base.name}` "
            f"({self.sweep.base.method.name}), seeds {self.sweep.seeds}.\n\n"
            "Objective (maximised): mean over seeds of the average accuracy on the validation split "
            "carved from each task's training data; the test split is never read by the search.\n\n"
            "Search space:\n\n" + "\n".join(f"* `{k}`: {v}" for k, v in space.items())
        )
        tags = {
            "sweep.name": self.sweep.name,
            "sweep.dir": str(self.sweep.dir),
            "sweep.role": "parent",
            "mlflow.note.content": note,
            **{f"version.{k}": v for k, v in package_versions().items()},
        }
        run = self.client.create_run(self.tracker.experiment_id, run_name=self.sweep.name, tags=tags)
        run_id = run.info.run_id
        params = {
            **{f"space.{k}": v for k, v in space.items()},
            "sweep.num_samples": cfg.num_samples,
            "sweep.max_concurrent": cfg.max_concurrent,
            "sweep.seeds": self.sweep.seeds,
            "sweep.metric": f"{METRIC} (mean over seeds of the validation average accuracy)",
            "sweep.sampler": f"{cfg.sampler.name} seed={cfg.sampler.seed} {cfg.sampler.options or ''}".strip(),
            "sweep.scheduler": cfg.scheduler.name if cfg.scheduler.name == "fifo" else
            f"asha grace_period={cfg.scheduler.grace_period} reduction_factor={cfg.scheduler.reduction_factor}",
            "sweep.resources_per_trial": f"cpu={cfg.resources_per_trial.cpu} gpu={cfg.resources_per_trial.gpu}",
            "sweep.study": f"{self.sweep.study_name} @ {masked_url(self.sweep.storage_url)}",
            "base.config": self.sweep.base.name,
            "base.method": self.sweep.base.method.name,
            "base.dataset": self.sweep.base.data.name,
            "base.num_tasks": self.sweep.base.data.num_tasks,
        }
        self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        logged = self.sweep.to_dict()
        if logged["sweep"]["storage"]:
            logged["sweep"]["storage"] = masked_url(logged["sweep"]["storage"])
        self.client.log_text(run_id, yaml.safe_dump(logged, sort_keys=False), "sweep.yaml")
        state.write_json(_PARENT_FILE, {"run_id": run_id, "tracking_uri": self.tracker.uri})
        self.parent_run_id = run_id
        return run_id

    def end_parent(self, status: str, note: str | None = None) -> None:
        if self.parent_run_id is None:
            return
        if note:
            self.client.set_tag(self.parent_run_id, "sweep.note", note)
        self.client.set_terminated(self.parent_run_id, status)

    def log_summary(self, summary: SweepSummary) -> None:
        """Trials table, plots and the best configuration into the parent run."""
        from pipeline.reporting.plots import close

        from .plots import objective_scatter, search_history

        run_id = self.parent_run_id
        if run_id is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trials.csv"
            summary.table.to_csv(path, index=False, float_format="%.6f")
            self.client.log_artifact(run_id, str(path))
        if len(summary.table):
            fig = objective_scatter(summary.table, self.sweep.space, f"{self.sweep.name}: objective vs parameters")
            self.client.log_figure(run_id, fig, "plots/objective_vs_params.png")
            close(fig)
            fig = search_history(summary.table, f"{self.sweep.name}: search history")
            self.client.log_figure(run_id, fig, "plots/search_history.png")
            close(fig)
        counts = summary.table["status"].value_counts().to_dict() if len(summary.table) else {}
        values = {mk.trials_with_status(status): n for status, n in counts.items()}
        best = summary.best
        if best is not None:
            values.update({mk.best(name): best[name] for name in self.sweep.space.names})
            columns = ("objective", "val_acc", "test_avg_acc", "test_final_acc")  # the summary's, in TRIAL_METRICS order
            values.update({mk.best(name): best[column] for name, column in zip(mk.TRIAL_METRICS, columns)})
            from mlflow.entities import RunTag

            tags = {
                "best.trial_id": best["trial_id"],
                "best.run_id": str(best.get("mlflow_run_id")),
                "best.params": ", ".join(f"{k}={v}" for k, v in summary.best_params.items()),
                "best.rerun_command": summary.rerun_command(),
            }
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            if summary.best_config_path.is_file():
                self.client.log_artifact(run_id, str(summary.best_config_path))
        self.client.log_batch(run_id, metrics=_metrics(values, 0))

    # ---------------------------------------------------------------- trials
    def open_trial(self, trial_id: str, params: dict[str, Any], number: int | None = None) -> _TrialRuns:
        """Create (or reopen) the MLflow runs of a trial; ``number`` (Tune's order) names a new one."""
        if trial_id in self._trials:
            return self._trials[trial_id]
        cfg = self.sweep.trial_config(params, trial_id)
        specs = make_specs(cfg)
        versions = package_versions()
        label = f"trial {number:03d}" if number is not None else f"trial {trial_id}"
        name = f"{label}: " + " ".join(f"{k}={_short(v)}" for k, v in params.items())
        tags = {"sweep.name": self.sweep.name, "sweep.trial_id": trial_id, "sweep.role": "trial"}
        if len(specs) == 1:
            run_dir = init_run_dir(specs[0], versions)
            fresh = run_dir.read_tracking() is None
            run_id = self.tracker.open_run(specs[0], run_dir, parent_run_id=self.parent_run_id, tags=tags)
            if fresh:
                self.client.update_run(run_id, name=name)
        else:
            run_id = self._find_trial_run(trial_id) or self._create_trial_run(name, tags, cfg, params)
            for spec in specs:
                self.tracker.open_run(spec, init_run_dir(spec, versions), parent_run_id=run_id, tags={**tags, "sweep.role": "seed"})
        self.client.update_run(run_id, status="RUNNING")
        runs = _TrialRuns(trial_id, params, specs, run_id)
        self._trials[trial_id] = runs
        return runs

    def _find_trial_run(self, trial_id: str) -> str | None:
        """The trial run of a multi-seed trial, created before a restart."""
        found = self.client.search_runs(
            [self.tracker.experiment_id],
            f"tags.mlflow.parentRunId = '{self.parent_run_id}' and tags.`sweep.trial_id` = '{trial_id}' and tags.`sweep.role` = 'trial'",
        )
        return found[0].info.run_id if found else None

    def _create_trial_run(self, name: str, tags: dict[str, str], cfg, params: dict[str, Any]) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(self.tracker.experiment_id, run_name=name, tags={**tags, "mlflow.parentRunId": self.parent_run_id or ""})
        logged = {p.key: params[p.name] for p in self.sweep.space.params}
        logged.update({"seeds": cfg.seeds, "config_name": cfg.name, "method": cfg.method.name})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in logged.items()])
        self.client.log_text(run.info.run_id, yaml.safe_dump({"params": params, "seeds": cfg.seeds}), "trial.yaml")
        return run.info.run_id

    def sync_trial(self, trial_id: str, params: dict[str, Any], result: dict[str, Any] | None = None) -> _TrialRuns:
        """Sync the trial's run directories to MLflow, and log the reported metrics."""
        runs = self.open_trial(trial_id, params)
        for spec in runs.specs:
            self.tracker.sync(RunDir(spec.run_dir))
        if result and METRIC in result:
            step = int(result[TIME_ATTR]) - 1
            self.client.log_batch(runs.run_id, metrics=_metrics({mk.OBJECTIVE: result[METRIC], mk.VAL_ACC: result[mk.VAL_ACC]}, step))
        return runs

    def end_trial(self, trial_id: str, params: dict[str, Any], status: str, error: str | None = None) -> None:
        """Close the trial's runs as it ended: complete (FINISHED), stopped (KILLED), error (FAILED)."""
        runs = self.sync_trial(trial_id, params)
        del self._trials[trial_id]
        if status == "error":
            self.tracker.fail_run(runs.run_id, error or "failed")
            for spec in runs.specs:
                if self.tracker.run_id(RunDir(spec.run_dir)) != runs.run_id:
                    self.tracker.fail(RunDir(spec.run_dir), error or "failed")
        elif status == "complete":
            finals = [self.tracker.finish(RunDir(s.run_dir)) for s in runs.specs]
            if len(runs.specs) > 1:
                self.client.set_terminated(runs.run_id, "FINISHED")
            self._log_trial_finals(runs, finals)
        else:
            done = tasks_done(self.sweep, trial_id, params)
            for run_id in {runs.run_id, *(self.tracker.run_id(RunDir(s.run_dir)) for s in runs.specs)}:
                self.client.set_tag(run_id, "sweep.stopped_after_task", str(done))
                self.client.set_terminated(run_id, "KILLED")
        self.client.set_tag(runs.run_id, "sweep.status", status)

    def close_trials(self, summary: SweepSummary) -> list[str]:
        """End the trial runs still RUNNING in MLflow whose trial has ended by Ray Tune's books
        (the driver was killed between the two), and those of trials Tune never recorded (``lost``)."""
        ended = {row["trial_id"]: row for row in summary.table.to_dict("records") if row["status"] != "running"}
        known = set(summary.table["trial_id"])
        closed = []
        running = self.client.search_runs(
            [self.tracker.experiment_id],
            f"tags.mlflow.parentRunId = '{self.parent_run_id}' and tags.`sweep.role` = 'trial' and attributes.status = 'RUNNING'",
        )
        for run in running:
            trial_id = run.data.tags.get("sweep.trial_id")
            if trial_id in ended:
                row = ended[trial_id]
                params = {name: row[name] for name in self.sweep.space.names}
                note = "ended while the driver was being killed" if row["status"] == "error" else None
                self.end_trial(trial_id, params, row["status"], note)
            elif trial_id not in known:
                self.client.set_tag(run.info.run_id, "sweep.status", "lost")
                self.client.set_terminated(run.info.run_id, "KILLED")
            else:
                continue
            closed.append(trial_id)
        return closed

    def _log_trial_finals(self, runs: _TrialRuns, finals: list[dict[str, float]]) -> None:
        """Means over seeds: validation (as the trial reported it) and test (reported only)."""
        val = [validation_objective(validation_rows(RunDir(s.run_dir), len(self.sessions))) for s in runs.specs]
        values = {
            mk.trial("val_avg_acc"): sum(v[0] for v in val) / len(val),
            mk.trial("val_final_acc"): sum(v[1] for v in val) / len(val),
            mk.trial("test_avg_acc"): sum(f["avg_acc_task_mean"] for f in finals) / len(finals),
            mk.trial("test_final_acc"): sum(f["final_acc_task_mean"] for f in finals) / len(finals),
        }
        self.client.log_batch(runs.run_id, metrics=_metrics(values, len(self.sessions) - 1))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class SweepCallback(Callback):
    """Ray Tune callback in the driver: brings MLflow's trial runs up to date through
    :class:`SweepTracker` as trials start, report and end.

    Ray Tune keeps the trials' books; this callback only logs. MLflow problems are
    logged as warnings and never stop the sweep; the trial's next result (or the
    end of the sweep, :meth:`SweepTracker.close_trials`) syncs whatever was missed.

    Args:
        sweep: the sweep.
        track: log to MLflow, under the parent run that :meth:`SweepTracker.open_parent`
            recorded in the sweep directory before the ``Tuner`` started. (The id is read
            from there, not stored here: ``Tuner.restore`` brings back this object as it
            was pickled at the start, while the parent may have been recreated since.)
    """

    def __init__(self, sweep: Sweep, track: bool) -> None:
        self.sweep = sweep
        self.track = track
        self._tracker: SweepTracker | None = None

    def __getstate__(self) -> dict[str, Any]:  # pickled into the Tuner's state: no client
        return {**self.__dict__, "_tracker": None}

    def _mlflow(self, what: str, method: str, *args: Any) -> None:
        if not self.track:
            return
        try:
            if self._tracker is None:
                tracker = SweepTracker(self.sweep)
                tracker.parent_run_id = RunDir(self.sweep.dir).read_json(_PARENT_FILE)["run_id"]
                self._tracker = tracker
            getattr(self._tracker, method)(*args)
        except Exception as exc:  # noqa: BLE001 - tracking must not take the sweep down
            _logger.warning("MLflow logging failed (%s): %s: %s", what, type(exc).__name__, exc)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self._mlflow("trial start", "open_trial", trial.trial_id, dict(trial.config), trials.index(trial) if trial in trials else None)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self._mlflow("trial result", "sync_trial", trial.trial_id, dict(trial.config), dict(result))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        if not self.track:
            return
        done = tasks_done(self.sweep, trial.trial_id, dict(trial.config))
        self._mlflow("trial end", "end_trial", trial.trial_id, dict(trial.config), trial_status("TERMINATED", done, self.sweep.num_sessions))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        error = f"trial {trial.trial_id} failed; see {trial.local_path or 'its Ray Tune trial directory'}"
        self._mlflow("trial error", "end_trial", trial.trial_id, dict(trial.config), "error", error)
