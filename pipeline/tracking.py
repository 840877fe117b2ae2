"""MLflow tracking of runs: one MLflow run per task-sequence run.

Only the driver talks to MLflow (workers write the run directory); it logs each
stage's result as the stage finishes, with ``step`` = session index, and the
artifacts at the end. What has been logged is recorded in the run directory
(``tracking.json``), so a resumed run reopens the same MLflow run and logs each
stage exactly once.

Metric names (``/`` groups them in the MLflow UI):

* ``acc/test/task_003``, ``acc/val/task_003`` — R[s, 3] at step s;
* ``acc/test/task_mean``, ``acc/test/sample_weighted`` (and ``val``) — accuracy after session s;
* ``forgetting/test``, ``bwt/test`` — over the sessions so far;
* ``train/loss``, ``train/accuracy`` — per epoch (step = global epoch);
* ``memory/rank/<layer>``, ``memory/rank_mean``, ``memory/threshold`` — after the update;
* ``interference/ratio`` — new branch's output on old vs new tasks' inputs;
* ``time/<stage>_s`` — stage wall time; ``final/*`` — the summary at the end.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from .config import TrackingConfig, config_to_dict, flatten
from .lock import store_lock
from .plots import accuracy_heatmap, close, figure_pixels, metric_curves
from .timestamps import stage_timestamp_ms
from .results import collect_results
from model.methods import StepResult

from .stages import RunSpec
from .state import IntegrityError, RunDir, StageKey
from .system_metrics import SystemMetrics

__all__ = ["Tracker", "resolve_tracking_uri", "package_versions", "git_commit"]

_logger = logging.getLogger(__name__)

_PACKAGES = ("torch", "torchvision", "timm", "mlflow", "optuna", "ray", "pandas", "numpy", "inflora-pipeline")
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """``MLFLOW_TRACKING_URI`` wins, then ``tracking.uri``, then ``sqlite:///./mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


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


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite store go next to its database file (``mlartifacts/``),
    not to ``./mlruns`` of whatever directory the command ran in; servers decide themselves."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return (db.parent / "mlartifacts" / safe).resolve().as_uri()


# MLflow 3 records an experiment's kind (GenAI or model training) in this tag. The
# 3.17 UI also keeps a GenAI / Model training switch in the browser (GenAI at first),
# which wins over the tag there: `inflora ui` prints links that set it (pipeline/cli.py).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def mark_model_training(client, experiment_id: str) -> None:
    """Tag an experiment as model training, unless someone chose its kind already."""
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)


HEATMAP_IMAGE_KEY = "acc/test/accuracy_matrix"
# The finished run's matrix and curves, once, at the last step (no slider that opens on step 0).
# The "Model metrics" tab sorts its sections by name (String.localeCompare: "_" before letters
# and digits), so "_final" is its first section, above "acc_task_id/..." and "acc/...".
FINAL_IMAGE_KEYS = {"matrix": "_final/accuracy_matrix", "curves": "_final/accuracy_curves"}


def log_heatmap_image(client, run_id: str, fig, step: int) -> None:
    """The heat map as an MLflow image at ``step``: the run page's "Model metrics" tab shows it
    beside the ``acc/test`` charts (with a step slider), one click from the run."""
    client.log_image(run_id, figure_pixels(fig), key=HEATMAP_IMAGE_KEY, step=step)


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


class Tracker:
    """Logs runs to one MLflow experiment through :class:`mlflow.MlflowClient`.

    Args:
        cfg: tracking settings (the experiment name, the URI fallback).
        experiment: overrides ``cfg.experiment``.
    """

    def __init__(self, cfg: TrackingConfig, experiment: str | None = None, *, figures_every_stage: bool = True) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        self.uri = resolve_tracking_uri(cfg)
        self.cfg = cfg
        self.figures_every_stage = figures_every_stage
        name = experiment or cfg.experiment
        with store_lock(self.uri):  # a fresh sqlite store is created (migrated) by one process at a time
            self.client = MlflowClient(tracking_uri=self.uri)
            found = self.client.get_experiment_by_name(name)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(name, _artifact_location(self.uri, name))
        self.experiment_name = name
        mark_model_training(self.client, self.experiment_id)
        self.system_metrics = SystemMetrics(self.uri)

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
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        state_file = run_dir.file("tracking.json")
        if state_file.is_file():
            state = run_dir.read_json("tracking.json")
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
        run_dir.write_json("tracking.json", {"run_id": run_id, "tracking_uri": self.uri, "logged": []})
        self.client.log_batch(run_id, tags=[RunTag("run_dir", str(run_dir.path))])
        self.system_metrics.start(run_id, resume=False)
        return run_id

    def logged(self, run_dir: RunDir) -> set[str]:
        return set(run_dir.read_json("tracking.json")["logged"])

    def _mark_logged(self, run_dir: RunDir, key: StageKey) -> None:
        state = run_dir.read_json("tracking.json")
        state["logged"] = sorted(set(state["logged"]) | {str(key)})
        run_dir.write_json("tracking.json", state)

    # ---------------------------------------------------------------- stages
    def log_stage(self, run_id: str, spec: RunSpec, run_dir: RunDir, key: StageKey, result: StepResult, sessions: list[list[int]]) -> None:
        """Log one finished stage's result (once: repeated calls are ignored).

        Every step's ``metrics`` are logged at step = session, a training step's
        epochs at step = global epoch, an evaluation's rows as ``acc/<part>/task_XXX``
        with the running summaries.
        """
        if str(key) in self.logged(run_dir):
            return
        now = stage_timestamp_ms(run_dir, key)  # a re-sent batch is not logged twice
        s = key.session
        step = max(s, 0)
        metrics: list = _metric_batch({f"time/{key.stage}_s": result.wall_time_s}, step, now)
        if key.stage == "split":
            info = result.info
            self.client.set_tag(run_id, "class_order", " ".join(map(str, info["class_order"])))
            self.client.set_tag(run_id, "task_classes", "; ".join(" ".join(map(str, c)) for c in info["task_classes"]))
            for name, value in (info.get("protocol") or {}).items():  # split seed, split files and their SHA-256
                self.client.set_tag(run_id, f"protocol.{name}", str(value))
            sizes = {f"data/train_size/task_{t:03d}": n for t, n in enumerate(info["train_sizes"])}
            metrics += _metric_batch(sizes, 0, now)
        epochs = spec.config.train.epochs
        for record in result.epochs:
            global_epoch = s * epochs + int(record["epoch"])
            metrics += _metric_batch({"train/loss": record["loss"], "train/accuracy": record["train_accuracy"]}, global_epoch, now)
        if result.epochs:
            metrics += _metric_batch({"train/final_loss": result.epochs[-1]["loss"]}, s, now)
        if result.trainable_parameters is not None:
            metrics += _metric_batch({"params/trainable": float(result.trainable_parameters)}, step, now)
        peak = result.info.get("peak_memory_mb") or {}
        metrics += _metric_batch({f"memory/peak_{kind}_mb/{key.stage}": value for kind, value in peak.items()}, step, now)
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
            values[f"acc/test/task_{row.task:03d}"] = row.test
            if row.val is not None:
                values[f"acc/val/task_{row.task:03d}"] = row.val
            for name, value in row.extra.items():
                values[f"{name}/task_{row.task:03d}"] = value
                extras.setdefault(name, []).append(value)
        values.update({f"{name}/task_mean": sum(v) / len(v) for name, v in extras.items()})
        results = collect_results(run_dir, sessions, upto=s)
        if results.sessions_done == s + 1:
            for name, series in results.old_new().items():
                values[f"acc/test/{name}_tasks"] = series[-1]
            for part in ("test", "val"):
                curves = results.curves(part) if not (results.val.empty and part == "val") else {}
                for name, series in curves.items():
                    values[f"acc/{part}/{name}"] = series[-1]
                summary = results.summary(part)
                if summary:
                    values[f"forgetting/{part}"] = summary["forgetting"]
                    values[f"bwt/{part}"] = summary["bwt"]
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
            self.client.log_image(run_id, figure_pixels(fig), key=FINAL_IMAGE_KEYS["matrix"], step=upto)
        close(fig)
        curves = {f"test/{k}": v for k, v in results.curves("test").items()}
        if not results.val.empty and not results.val.isna().all().all():
            curves.update({f"val/{k}": v for k, v in results.curves("val").items()})
        fig = metric_curves(curves, f"{spec.label}: accuracy after each session")
        self.client.log_figure(run_id, fig, RESULT_PLOTS[1])
        if final:
            self.client.log_image(run_id, figure_pixels(fig), key=FINAL_IMAGE_KEYS["curves"], step=upto)
        close(fig)

    # ------------------------------------------------------------------- end
    def finish(self, run_id: str, spec: RunSpec, run_dir: RunDir, sessions: list[list[int]]) -> dict[str, float]:
        """Log the summary metrics and the run's files; mark the MLflow run finished."""
        results = collect_results(run_dir, sessions)
        summary = results.summary("test")
        state = run_dir.read_json("tracking.json")
        if state.get("finished"):  # a re-run of a finished run logs nothing again
            return summary
        values = {f"final/{k}": v for k, v in summary.items()}
        values.update({f"final/val_{k}": v for k, v in results.summary("val").items()})
        values.update({f"final/{k}": v for k, v in run_costs(run_dir, spec, sessions).items()})
        now = stage_timestamp_ms(run_dir, StageKey(len(sessions) - 1, "eval"))
        self.client.log_batch(run_id, metrics=_metric_batch(values, len(sessions) - 1, now))
        for name in ("split.json", "events.jsonl", "run.json"):
            if run_dir.file(name).is_file():
                self.client.log_artifact(run_id, str(run_dir.file(name)), "run_dir")
        if self.cfg.log_adapters:
            for relative in _verified_state_files(run_dir, len(sessions)):
                self.client.log_artifact(run_id, str(run_dir.file(relative)), f"adapters/{Path(relative).parent}")
        describe_run(self.client, run_id)
        self.system_metrics.stop(run_id)
        if "error" in self.client.get_run(run_id).data.tags:  # a killed run resumed to the end
            self.client.delete_tag(run_id, "error")
        self.client.set_terminated(run_id, "FINISHED")
        run_dir.write_json("tracking.json", {**run_dir.read_json("tracking.json"), "finished": True})
        return summary

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
        from .report import comparison_figure

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

    def fail(self, run_id: str, error: str, status: str = "FAILED") -> None:
        self.client.set_tag(run_id, "error", error[:5000])
        self.system_metrics.stop(run_id)
        self.client.set_terminated(run_id, status)



_UPLOADED_STATE = ("adapter.safetensors", "memory.safetensors", "aligned_heads.safetensors")


def _verified_state_files(run_dir: RunDir, num_sessions: int) -> list[str]:
    """Every state slot the run's stages recorded, each checked against its checksum.

    A file that does not match is never uploaded: :class:`IntegrityError` names it.
    """
    files: list[str] = []
    for s in range(num_sessions):
        for marker in sorted(run_dir.session_dir(s).glob("*.done.json")):
            key = StageKey(s, marker.name[: -len(".done.json")])
            run_dir.verify(key)
            files.extend(r for r in run_dir.read_done(key).get("outputs", {}) if Path(r).name in _UPLOADED_STATE)
    return files


def run_costs(run_dir: RunDir, spec: RunSpec, sessions: list[list[int]]) -> dict[str, float]:
    """Per-task costs of a finished run, from its stage markers.

    ``trainable_params_per_task`` (mean over training steps), ``wall_time_per_task_s``
    (every stage's wall time, split and all, over the number of tasks) and the
    largest ``peak_rss_mb`` (``peak_cuda_allocated_mb`` on a GPU) of any stage.
    """
    from .stages import method_of, read_result, stage_plan

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
