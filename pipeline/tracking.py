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

import yaml

from .config import TrackingConfig, config_to_dict, flatten
from .lock import store_lock
from .timestamps import stage_timestamp_ms
from .plots import accuracy_heatmap, close, metric_curves
from .results import collect_results
from .stages import RunSpec
from .state import RunDir, StageKey

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
        return run_id

    def logged(self, run_dir: RunDir) -> set[str]:
        return set(run_dir.read_json("tracking.json")["logged"])

    def _mark_logged(self, run_dir: RunDir, key: StageKey) -> None:
        state = run_dir.read_json("tracking.json")
        state["logged"] = sorted(set(state["logged"]) | {str(key)})
        run_dir.write_json("tracking.json", state)

    # ---------------------------------------------------------------- stages
    def log_stage(self, run_id: str, spec: RunSpec, run_dir: RunDir, key: StageKey, info: Mapping[str, Any], sessions: list[list[int]]) -> None:
        """Log one finished stage's result (once: repeated calls are ignored)."""
        if str(key) in self.logged(run_dir):
            return
        now = stage_timestamp_ms(run_dir, key)  # a re-sent batch is not logged twice
        s = key.session
        metrics: list = []
        step = max(s, 0)
        metrics += _metric_batch({f"time/{key.stage}_s": info.get("wall_time_s", math.nan)}, step, now)
        if key.stage == "split":
            self.client.set_tag(run_id, "class_order", " ".join(map(str, info["class_order"])))
            self.client.set_tag(run_id, "task_classes", "; ".join(" ".join(map(str, c)) for c in info["task_classes"]))
            sizes = {f"data/train_size/task_{t:03d}": n for t, n in enumerate(info["train_sizes"])}
            metrics += _metric_batch(sizes, 0, now)
        elif key.stage in ("design", "update", "align"):
            metrics += _metric_batch(info.get("metrics", {}), s, now)
        elif key.stage == "train":
            epochs = spec.config.train.epochs
            for record in info.get("epochs", []):
                global_epoch = s * epochs + int(record["epoch"])
                metrics += _metric_batch({"train/loss": record["loss"], "train/accuracy": record["train_accuracy"]}, global_epoch, now)
            if info.get("epochs"):
                metrics += _metric_batch({"train/final_loss": info["epochs"][-1]["loss"]}, s, now)
        elif key.stage == "eval":
            metrics += self._eval_metrics(run_dir, info, s, sessions, now)
            if self.figures_every_stage or s == len(sessions) - 1:
                self._log_matrix_artifacts(run_id, run_dir, spec, sessions, upto=s)
        for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + _MAX_METRICS_PER_BATCH])
        self._mark_logged(run_dir, key)

    def _eval_metrics(self, run_dir: RunDir, info: Mapping[str, Any], s: int, sessions: list[list[int]], now: int) -> list:
        values: dict[str, float] = {}
        for part in ("test", "val"):
            for t, acc in info[part].items():
                values[f"acc/{part}/task_{int(t):03d}"] = acc
        results = collect_results(run_dir, sessions, upto=s)
        if results.sessions_done == s + 1:
            for part in ("test", "val"):
                curves = results.curves(part) if not (results.val.empty and part == "val") else {}
                for name, series in curves.items():
                    values[f"acc/{part}/{name}"] = series[-1]
                summary = results.summary(part)
                if summary:
                    values[f"forgetting/{part}"] = summary["forgetting"]
                    values[f"bwt/{part}"] = summary["bwt"]
        values.update(info.get("metrics", {}))
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
        self.client.log_figure(run_id, fig, "plots/accuracy_matrix.png")
        close(fig)
        curves = {f"test/{k}": v for k, v in results.curves("test").items()}
        if not results.val.empty and not results.val.isna().all().all():
            curves.update({f"val/{k}": v for k, v in results.curves("val").items()})
        fig = metric_curves(curves, f"{spec.label}: accuracy after each session")
        self.client.log_figure(run_id, fig, "plots/accuracy_curves.png")
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
        now = stage_timestamp_ms(run_dir, StageKey(len(sessions) - 1, "eval"))
        self.client.log_batch(run_id, metrics=_metric_batch(values, len(sessions) - 1, now))
        for name in ("split.json", "events.jsonl", "run.json"):
            if run_dir.file(name).is_file():
                self.client.log_artifact(run_id, str(run_dir.file(name)), "run_dir")
        if self.cfg.log_adapters:
            for s in range(len(sessions)):
                for name in ("adapter.safetensors", "memory.safetensors"):
                    path = run_dir.session_dir(s) / name
                    if path.is_file():
                        self.client.log_artifact(run_id, str(path), f"adapters/session_{s:03d}")
        if "error" in self.client.get_run(run_id).data.tags:  # a killed run resumed to the end
            self.client.delete_tag(run_id, "error")
        self.client.set_terminated(run_id, "FINISHED")
        run_dir.write_json("tracking.json", {**run_dir.read_json("tracking.json"), "finished": True})
        return summary

    def fail(self, run_id: str, error: str, status: str = "FAILED") -> None:
        self.client.set_tag(run_id, "error", error[:5000])
        self.client.set_terminated(run_id, status)

