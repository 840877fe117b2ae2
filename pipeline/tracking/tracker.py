"""MLflow tracking of runs: one MLflow run per task-sequence run, kept in sync with its run directory.

Only the driver talks to MLflow (workers write the run directory). Tracking is a
*sync*: :meth:`Tracker.sync` logs every finished stage of a run directory that
``tracking.json`` does not list as logged yet, in plan order, and records it
there. The runner calls it on every stage event, the outage recovery
(:mod:`pipeline.tracking.offline`) when the server answers again, the sweep driver when a
trial reports; calling it twice logs nothing twice, so a resumed run reopens the
same MLflow run and logs each stage exactly once. The metric names come from
:mod:`pipeline.tracking.metric_keys`.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import quote

import yaml

from model.methods import StepResult

from ..config import TrackingConfig, config_to_dict, flatten
from ..reporting.plots import accuracy_heatmap, close, figure_pixels, metric_curves
from ..reporting.report import comparison_figure
from ..reporting.results import collect_results
from ..running.stages import RunSpec, method_of, read_result, stage_plan
from ..running.state import RunDir, StageKey
from . import metric_keys as mk
from .store import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, open_experiment, resolve_tracking_uri
from .system_metrics import SystemMetrics
from .timestamps import stage_timestamp_ms

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "MODEL_TRAINING_KIND",
    "RunTracker",
    "Tracker",
    "git_commit",
    "package_versions",
    "resolve_tracking_uri",
    "run_costs",
]

_logger = logging.getLogger(__name__)

_PACKAGES = ("torch", "torchvision", "timm", "mlflow", "optuna", "ray", "pandas", "numpy", "inflora-pipeline")
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """Commit of the source tree this package runs from, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def log_heatmap_image(client, run_id: str, fig, step: int) -> None:
    """The heat map as an MLflow image at ``step``: the run page's "Model metrics" tab shows it
    beside the ``acc/test`` charts (with a step slider), one click from the run."""
    client.log_image(run_id, figure_pixels(fig), key=mk.HEATMAP_IMAGE, step=step)


DESCRIPTION_TAG = "mlflow.note.content"
RESULT_PLOTS = ("plots/accuracy_matrix.png", "plots/accuracy_curves.png")


def describe_run(client, run_id: str) -> None:
    """Show the final matrix and curves in the run's description, unless it has one.

    The description is the first free-text section of the run's Overview tab (the page a
    click on a run opens), above its metrics and parameters; MLflow renders it as Markdown.
    The image links are relative, so they resolve against wherever the UI is served.
    """
    if DESCRIPTION_TAG not in client.get_run(run_id).data.tags:
        links = (f"![{Path(p).stem}](get-artifact?path={quote(p, safe='')}&run_uuid={run_id})" for p in RESULT_PLOTS)
        client.set_tag(run_id, DESCRIPTION_TAG, "\n".join(links))


NODES_TAG = "nodes"
"""One tag, ``{node id: stages run there}``; the node of each stage is in ``events.jsonl``
(one tag per stage flooded the run's overview: 21 for the demo)."""


def stage_nodes(run_dir: RunDir) -> dict[str, str]:
    """The Ray node of each stage (the last one, for a stage that ran again), from ``events.jsonl``."""
    path = run_dir.file("events.jsonl")
    lines = path.read_text().splitlines() if path.is_file() else []
    return {e["stage"]: e["node_id"] for e in map(json.loads, lines) if e.get("event") == "node"}


def log_stage_node(client, run_id: str, run_dir: RunDir, key: StageKey, result: StepResult) -> None:
    """Record the Ray node a stage ran on: an events.jsonl line and the ``nodes`` tag's count."""
    node = result.node_id
    if node:
        run_dir.log_event(key, "node", node_id=node)
        client.set_tag(run_id, NODES_TAG, json.dumps(collections.Counter(stage_nodes(run_dir).values())))


def _metric_batch(values: Mapping[str, float], step: int, timestamp: int) -> list:
    from mlflow.entities import Metric

    return [
        Metric(key, float(v), timestamp, step)
        for key, v in values.items()
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    ]


class RunTracker(ABC):
    """What the runner, the outage recovery and the sweep driver ask of a tracker.

    Every method but :meth:`open_run` names the run by its directory: the
    directory is the truth, MLflow a copy that :meth:`sync` brings up to date.
    """

    uri: str

    @abstractmethod
    def open_run(self, spec: RunSpec, run_dir: RunDir, *, parent_run_id: str | None = None,
                 tags: Mapping[str, str] | None = None) -> str:
        """Create the MLflow run of ``spec`` (or reopen the one its directory records); its id."""

    @abstractmethod
    def sync(self, run_dir: RunDir) -> None:
        """Log every finished stage of ``run_dir`` not logged yet (idempotent)."""

    @abstractmethod
    def finish(self, run_dir: RunDir) -> dict[str, float]:
        """Sync, log the run's summary and files, end its MLflow run; the test summary."""

    @abstractmethod
    def fail(self, run_dir: RunDir, error: str, status: str = "FAILED") -> None:
        """End the run's MLflow run as ``status`` (``FAILED``, ``KILLED``) with ``error``."""

    @abstractmethod
    def open_comparison(self, cfg, methods: list[str], seeds: list[int]) -> str | None:
        """A parent run for ``inflora run --methods`` (``None`` when it cannot be created)."""

    @abstractmethod
    def finish_comparison(self, run_id: str, runs, summary) -> None:
        """Log the comparison table and its figure to the parent run; end it."""

    def on_stage(self, spec: RunSpec, key: StageKey, result: StepResult) -> None:
        """Stage event (:func:`pipeline.running.runner.execute` subscribers): sync the stage's run."""
        self.sync(RunDir(spec.run_dir))


@dataclass
class _OpenRun:
    """A run this tracker opened: its MLflow run id and what its sync needs."""

    run_id: str
    spec: RunSpec
    sessions: list[list[int]]
    plan: list[StageKey]


class Tracker(RunTracker):
    """Logs runs to one MLflow experiment through :class:`mlflow.MlflowClient`.

    Args:
        cfg: tracking settings (the experiment name, the URI fallback).
        experiment: overrides ``cfg.experiment``.
        figures_every_stage: log the heat map and curves after every evaluation (else after the last).
    """

    def __init__(self, cfg: TrackingConfig, experiment: str | None = None, *, figures_every_stage: bool = True) -> None:
        self.uri = resolve_tracking_uri(cfg)
        self.cfg = cfg
        self.figures_every_stage = figures_every_stage
        self.experiment_name = experiment or cfg.experiment
        self.client, self.experiment_id = open_experiment(self.uri, self.experiment_name)
        self.system_metrics = SystemMetrics(self.uri)
        self._open: dict[Path, _OpenRun] = {}

    # ------------------------------------------------------------------ runs
    def open_run(
        self,
        spec: RunSpec,
        run_dir: RunDir,
        *,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Create the MLflow run of ``spec``, or reopen the one recorded in its run directory."""
        method = method_of(spec.config)
        run_id = self._reopen(run_dir) or self._create(spec, run_dir, parent_run_id, tags)
        num_tasks = spec.config.data.num_tasks
        self._open[run_dir.path] = _OpenRun(run_id, spec, method.sessions(num_tasks), stage_plan(method, num_tasks))
        return run_id

    def _reopen(self, run_dir: RunDir) -> str | None:
        from mlflow.exceptions import MlflowException

        state = run_dir.read_tracking()
        if state is None:
            return None
        try:
            run = self.client.get_run(state["run_id"])
            if run.info.experiment_id == self.experiment_id and run.info.lifecycle_stage == "active":
                if not state.get("finished"):  # a finished run stays FINISHED when re-run
                    self.client.update_run(state["run_id"], status="RUNNING")
                    self.system_metrics.start(state["run_id"], resume=True)
                return state["run_id"]
        except MlflowException:
            pass
        _logger.warning("MLflow run %s of %s is gone; logging to a new run", state.get("run_id"), run_dir.path)
        return None

    def _create(self, spec: RunSpec, run_dir: RunDir, parent_run_id: str | None, tags: Mapping[str, str] | None) -> str:
        from mlflow.entities import Param, RunTag

        cfg = spec.config
        all_tags = {
            "seed": str(spec.seed),
            "method": cfg.method.name,
            "config_name": cfg.name,
            "result_key": cfg.result_key(),
            "run_dir": str(run_dir.path),
            "dataset": cfg.data.name,
            **{f"version.{k}": v for k, v in package_versions().items()},
            **dict(tags or {}),
        }
        commit = git_commit()
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=f"{cfg.name}-{cfg.method.name}-seed{spec.seed}", tags=all_tags)
        run_id = run.info.run_id
        params = {**flatten(config_to_dict(cfg)), "seed": spec.seed}
        params.pop("seeds", None)
        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])
        self.client.log_text(run_id, yaml.safe_dump(config_to_dict(cfg), sort_keys=False), "config.yaml")
        run_dir.write_tracking({"run_id": run_id, "parent_run_id": parent_run_id, "tracking_uri": self.uri, "logged": []})
        self.client.log_batch(run_id, tags=[RunTag("run_dir", str(run_dir.path))])
        self.system_metrics.start(run_id, resume=False)
        return run_id

    def run_id(self, run_dir: RunDir) -> str:
        """The MLflow run of an open run directory."""
        return self._open[run_dir.path].run_id

    @staticmethod
    def logged(run_dir: RunDir) -> set[str]:
        """The stages ``tracking.json`` lists as logged."""
        return set(run_dir.read_json(RunDir.TRACKING)["logged"])

    def _mark_logged(self, run_dir: RunDir, key: StageKey) -> None:
        state = run_dir.read_json(RunDir.TRACKING)
        state["logged"] = sorted(set(state["logged"]) | {str(key)})
        run_dir.write_tracking(state)

    # ---------------------------------------------------------------- stages
    def sync(self, run_dir: RunDir) -> None:
        """Log every finished stage of ``run_dir`` that is not logged yet, in plan order."""
        run = self._open[run_dir.path]
        logged = self.logged(run_dir)
        for key in run.plan:
            if str(key) not in logged and run_dir.is_done(key):
                self._log_stage(run, run_dir, key, read_result(run_dir, key))

    def _log_stage(self, run: _OpenRun, run_dir: RunDir, key: StageKey, result: StepResult) -> None:
        """Log one finished stage's result and record it in ``tracking.json``.

        Every step's ``metrics`` are logged at step = session, a training step's
        epochs at step = global epoch, an evaluation's rows as ``acc/<part>/task_XXX``
        with the running summaries.
        """
        run_id, spec, sessions = run.run_id, run.spec, run.sessions
        now = stage_timestamp_ms(run_dir, key)  # a re-sent batch is not logged twice
        s = key.session
        step = max(s, 0)
        metrics: list = _metric_batch({mk.stage_time(key.stage): result.wall_time_s}, step, now)
        if key.stage == "split":
            info = result.info
            self.client.set_tag(run_id, "class_order", " ".join(map(str, info["class_order"])))
            self.client.set_tag(run_id, "task_classes", "; ".join(" ".join(map(str, c)) for c in info["task_classes"]))
            for name, value in (info.get("protocol") or {}).items():  # split seed, split files and their SHA-256
                self.client.set_tag(run_id, f"protocol.{name}", str(value))
            sizes = {mk.train_size(t): n for t, n in enumerate(info["train_sizes"])}
            metrics += _metric_batch(sizes, 0, now)
        epochs = spec.config.train.epochs
        for record in result.epochs:
            global_epoch = s * epochs + int(record["epoch"])
            metrics += _metric_batch({mk.TRAIN_LOSS: record["loss"], mk.TRAIN_ACCURACY: record["train_accuracy"]}, global_epoch, now)
        if result.epochs:
            metrics += _metric_batch({mk.TRAIN_FINAL_LOSS: result.epochs[-1]["loss"]}, s, now)
        if result.trainable_parameters is not None:
            metrics += _metric_batch({mk.PARAMS_TRAINABLE: float(result.trainable_parameters)}, step, now)
        peak = result.info.get("peak_memory_mb") or {}
        metrics += _metric_batch({mk.peak_memory(kind, key.stage): value for kind, value in peak.items()}, step, now)
        if result.eval is not None:
            metrics += self._eval_metrics(run_dir, result, s, sessions, now)
            if self.figures_every_stage or s == len(sessions) - 1:
                self._log_matrix_artifacts(run_id, run_dir, spec, sessions, upto=s)
        else:
            metrics += _metric_batch(result.metrics, step, now)
        for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + _MAX_METRICS_PER_BATCH])
        log_stage_node(self.client, run_id, run_dir, key, result)
        self._mark_logged(run_dir, key)

    def _eval_metrics(self, run_dir: RunDir, result: StepResult, s: int, sessions: list[list[int]], now: int) -> list:
        values: dict[str, float] = {}
        extras: dict[str, list[float]] = {}
        for row in result.eval or []:
            values[mk.acc("test", row.task)] = row.test
            if row.val is not None:
                values[mk.acc("val", row.task)] = row.val
            for name, value in row.extra.items():
                values[mk.per_task(name, row.task)] = value
                extras.setdefault(name, []).append(value)
        values.update({mk.task_mean(name): sum(v) / len(v) for name, v in extras.items()})
        results = collect_results(run_dir, sessions, upto=s)
        if results.sessions_done == s + 1:
            for name, series in results.old_new().items():
                values[mk.after_session("test", f"{name}_tasks")] = series[-1]
            for part in ("test", "val"):
                curves = results.curves(part) if not (results.val.empty and part == "val") else {}
                for name, series in curves.items():
                    values[mk.after_session(part, name)] = series[-1]
                summary = results.summary(part)
                if summary:
                    values[mk.over_sessions("forgetting", part)] = summary["forgetting"]
                    values[mk.over_sessions("bwt", part)] = summary["bwt"]
        values.update(result.metrics)
        return _metric_batch(values, s, now)

    def _log_matrix_artifacts(self, run_id: str, run_dir: RunDir, spec: RunSpec, sessions: list[list[int]], upto: int) -> None:
        results = collect_results(run_dir, sessions, upto=upto)
        if results.sessions_done != upto + 1:
            return  # an earlier session's eval is still running; its own log call will do it
        with tempfile.TemporaryDirectory() as tmp:
            for part, matrix in (("test", results.test), ("val", results.val)):
                path = Path(tmp) / f"accuracy_matrix_{part}.csv"
                matrix.to_csv(path, float_format="%.6f")
                self.client.log_artifact(run_id, str(path))
        fig = accuracy_heatmap(results.test, f"{spec.label}: test accuracy R[session, task]")
        self.client.log_figure(run_id, fig, RESULT_PLOTS[0])
        log_heatmap_image(self.client, run_id, fig, step=upto)
        final = upto == len(sessions) - 1
        if final:
            self.client.log_image(run_id, figure_pixels(fig), key=mk.FINAL_IMAGES["matrix"], step=upto)
        close(fig)
        curves = {f"test/{k}": v for k, v in results.curves("test").items()}
        if not results.val.empty and not results.val.isna().all().all():
            curves.update({f"val/{k}": v for k, v in results.curves("val").items()})
        fig = metric_curves(curves, f"{spec.label}: accuracy after each session")
        self.client.log_figure(run_id, fig, RESULT_PLOTS[1])
        if final:
            self.client.log_image(run_id, figure_pixels(fig), key=mk.FINAL_IMAGES["curves"], step=upto)
        close(fig)

    # ------------------------------------------------------------------- end
    def finish(self, run_dir: RunDir) -> dict[str, float]:
        """Sync, log the summary metrics and the run's files; mark the MLflow run finished."""
        self.sync(run_dir)
        run = self._open[run_dir.path]
        run_id, spec, sessions = run.run_id, run.spec, run.sessions
        results = collect_results(run_dir, sessions)
        summary = results.summary("test")
        state = run_dir.read_json(RunDir.TRACKING)
        if state.get("finished"):  # a re-run of a finished run logs nothing again
            return summary
        values = {mk.final(k): v for k, v in summary.items()}
        values.update({mk.final(k, "val"): v for k, v in results.summary("val").items()})
        values.update({mk.final(k): v for k, v in run_costs(run_dir, spec, sessions).items()})
        now = stage_timestamp_ms(run_dir, StageKey(len(sessions) - 1, "eval"))
        self.client.log_batch(run_id, metrics=_metric_batch(values, len(sessions) - 1, now))
        for name in (RunDir.SPLIT, RunDir.EVENTS, RunDir.RUN):
            if run_dir.file(name).is_file():
                self.client.log_artifact(run_id, str(run_dir.file(name)), "run_dir")
        if self.cfg.log_adapters:
            for relative in _verified_uploads(run_dir, spec):
                self.client.log_artifact(run_id, str(run_dir.file(relative)), f"adapters/{Path(relative).parent}")
        describe_run(self.client, run_id)
        self.system_metrics.stop(run_id)
        if "error" in self.client.get_run(run_id).data.tags:  # a killed run resumed to the end
            self.client.delete_tag(run_id, "error")
        self.client.set_terminated(run_id, "FINISHED")
        run_dir.write_tracking({**state, "finished": True})
        return summary

    def fail(self, run_dir: RunDir, error: str, status: str = "FAILED") -> None:
        self.fail_run(self._open[run_dir.path].run_id, error, status)

    def fail_run(self, run_id: str, error: str, status: str = "FAILED") -> None:
        """End any MLflow run (a sweep's trial run too) as ``status``, with ``error`` as its tag."""
        self.client.set_tag(run_id, "error", error[:5000])
        self.system_metrics.stop(run_id)
        self.client.set_terminated(run_id, status)

    # ------------------------------------------------------------ comparisons
    def open_comparison(self, cfg, methods: list[str], seeds: list[int]) -> str:
        """A parent run for ``inflora run --methods``: every method's runs nest under it."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{cfg.name}-comparison",
            tags={"comparison": "true", "config_name": cfg.name, "methods": " ".join(dict.fromkeys(methods))},
        )
        self.client.log_param(run.info.run_id, "seeds", " ".join(map(str, seeds)))
        self.client.log_text(run.info.run_id, yaml.safe_dump(config_to_dict(cfg), sort_keys=False), "config.yaml")
        return run.info.run_id

    def finish_comparison(self, run_id: str, runs, summary) -> None:
        """Log the comparison table (CSV) and its bar chart (PNG) to the parent run."""
        with tempfile.TemporaryDirectory() as tmp:
            runs.drop(columns="params", errors="ignore").to_csv(Path(tmp) / "runs.csv", index=False)
            summary.to_csv(Path(tmp) / "comparison.csv", index=False)
            self.client.log_artifact(run_id, str(Path(tmp) / "runs.csv"))
            self.client.log_artifact(run_id, str(Path(tmp) / "comparison.csv"))
        if not runs.empty:
            fig = comparison_figure(runs)
            self.client.log_figure(run_id, fig, "plots/comparison.png")
            close(fig)
        self.client.set_terminated(run_id, "FINISHED")


def _verified_uploads(run_dir: RunDir, spec: RunSpec) -> list[str]:
    """The state slots the run's steps declare uploaded (:attr:`Step.uploads`), each checked
    against its checksum: a file that does not match is never uploaded
    (:class:`~pipeline.running.state.IntegrityError` names it)."""
    method = method_of(spec.config)
    uploads = {step.name: step.uploads for step in method.steps()}
    files: list[str] = []
    for key in stage_plan(method, spec.config.data.num_tasks):
        if key.stage in uploads and uploads[key.stage] and run_dir.is_done(key):
            run_dir.verify(key)
            recorded = run_dir.read_done(key).get("outputs", {})
            files.extend(r for r in (run_dir.slot_file(key.session, slot) for slot in uploads[key.stage]) if r in recorded)
    return files


def run_costs(run_dir: RunDir, spec: RunSpec, sessions: list[list[int]]) -> dict[str, float]:
    """Per-task costs of a finished run, from its stage markers.

    ``trainable_params_per_task`` (mean over training steps), ``wall_time_per_task_s``
    (every stage's wall time, split and all, over the number of tasks) and the
    largest ``peak_rss_mb`` (``peak_cuda_allocated_mb`` on a GPU) of any stage.
    """
    method = method_of(spec.config)
    params, wall, peaks = [], 0.0, {}
    for key in stage_plan(method, spec.config.data.num_tasks):
        if not run_dir.is_done(key):
            continue
        result = read_result(run_dir, key)
        wall += result.wall_time_s or 0.0
        if result.trainable_parameters is not None:
            params.append(result.trainable_parameters)
        for kind, value in (result.info.get("peak_memory_mb") or {}).items():
            peaks[kind] = max(peaks.get(kind, 0.0), float(value))
    num_tasks = sum(len(s) for s in sessions)
    out = {"wall_time_per_task_s": wall / num_tasks, **{f"peak_{k}_mb": v for k, v in peaks.items()}}
    if params:
        out["trainable_params_per_task"] = sum(params) / len(params)
    return out
