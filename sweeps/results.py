"""A sweep's results, read back from its directory: the trials table and the best configuration.

Everything comes from files the sweep wrote (``trials/<id>/trial.json`` and the
runs' eval markers), so it works during a sweep, after a killed one, and
without Ray or MLflow. Validation numbers are recomputed with the trials'
own :func:`sweeps.trial.validation_objective`; the test numbers are read here,
after the search, and only reported.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipeline.config import config_to_dict
from pipeline.results import collect_results
from pipeline.runner import make_specs
from pipeline.stages import method_of, read_result
from pipeline.state import RunDir, StageKey

from .config import Sweep
from .trial import validation_objective

__all__ = [
    "TRIAL_FILE",
    "SweepSummary",
    "read_trial",
    "summarize_sweep",
    "trial_ended",
    "trial_started",
    "trials_lost",
    "validation_rows",
    "write_summary",
    "write_trial",
]

TRIAL_FILE = "trial.json"
_RERUN_SEEDS = 5


def read_trial(sweep: Sweep, trial_id: str) -> dict[str, Any] | None:
    path = sweep.trial_dir(trial_id) / TRIAL_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_trial(sweep: Sweep, trial_id: str, **fields: Any) -> dict[str, Any]:
    """Create or update ``trials/<id>/trial.json`` (params, status, MLflow run id…).

    A new trial gets the next ``number`` (0, 1, …: the order trials started in).
    """
    record = read_trial(sweep, trial_id)
    if record is None:
        record = {"trial_id": trial_id, "number": len(list((sweep.dir / "trials").glob(f"*/{TRIAL_FILE}")))}
    record.update(fields)
    RunDir(sweep.trial_dir(trial_id)).write_json(TRIAL_FILE, record)
    return record


def _tasks_done(sweep: Sweep, trial_id: str, params: dict[str, Any]) -> int:
    cfg = sweep.trial_config(params, trial_id)
    num_sessions = sweep.num_sessions
    return min(len(validation_rows(RunDir(spec.run_dir), num_sessions)) for spec in make_specs(cfg))


def trial_started(sweep: Sweep, trial_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """Record a starting (or restarting) trial; returns its record."""
    record = read_trial(sweep, trial_id)
    if record is None:
        record = write_trial(sweep, trial_id, params=dict(params), seeds=sweep.seeds, status="running")
    elif record.get("status") != "running":
        record = write_trial(sweep, trial_id, status="running")
    return record


def trial_ended(sweep: Sweep, trial_id: str, params: dict[str, Any], error: bool = False) -> dict[str, Any]:
    """Record how a trial ended: ``complete`` (every task of every seed), ``stopped`` (by the scheduler) or ``error``."""
    trial_started(sweep, trial_id, params)
    done = _tasks_done(sweep, trial_id, params)
    status = "error" if error else "complete" if done == sweep.num_sessions else "stopped"
    return write_trial(sweep, trial_id, status=status, tasks_done=done)


def trials_lost(sweep: Sweep, known: set[str]) -> list[dict[str, Any]]:
    """Mark ``running`` trials Ray Tune does not know as ``lost`` (started just before the driver was killed)."""
    lost = []
    for path in sorted((sweep.dir / "trials").glob(f"*/{TRIAL_FILE}")):
        record = json.loads(path.read_text())
        if record.get("status") == "running" and record["trial_id"] not in known:
            lost.append(write_trial(sweep, record["trial_id"], status="lost"))
    return lost


@dataclass
class SweepSummary:
    """The trials of a sweep and its best configuration.

    Attributes:
        table: one row per trial: ``trial_id``, ``number``, ``status``, ``tasks_done``,
            the parameters, ``objective`` and ``val_acc`` (what the search saw),
            ``test_avg_acc`` and ``test_final_acc`` (never seen by the search), ``mlflow_run_id``.
        best: the row of the best complete trial (``None`` before one finishes).
        rerun_seeds: seeds for re-running the best configuration (none of the sweep's).
    """

    sweep: Sweep
    table: pd.DataFrame
    best: dict[str, Any] | None
    rerun_seeds: list[int] = field(default_factory=list)

    @property
    def best_config_path(self) -> Path:
        return self.sweep.dir / "best_config.yaml"

    @property
    def best_params(self) -> dict[str, Any]:
        if self.best is None:
            return {}
        return {name: self.best[name] for name in self.sweep.space.names}

    def rerun_command(self) -> str:
        """``inflora run <sweep dir>/best_config.yaml --seeds …``: the best configuration on new seeds."""
        seeds = " ".join(map(str, self.rerun_seeds))
        return f"inflora run {shlex.quote(str(self.best_config_path))} --seeds {seeds}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "sweep": self.sweep.name,
            "dir": str(self.sweep.dir),
            "trials": len(self.table),
            "complete_trials": int((self.table["status"] == "complete").sum()) if len(self.table) else 0,
            "seeds": self.sweep.seeds,
            "best": self.best,
            "best_config": str(self.best_config_path) if self.best else None,
            "rerun_command": self.rerun_command() if self.best else None,
        }


def validation_rows(run_dir: RunDir, num_sessions: int) -> list[dict[int, float]]:
    """The validation rows of a run's consecutive finished eval stages (what its trial reported from)."""
    rows = []
    for s in range(num_sessions):
        key = StageKey(s, "eval")
        if not run_dir.is_done(key):
            break
        rows.append({int(t): float(a) for t, a in read_result(run_dir, key).val_row().items()})
    return rows


def _status(recorded: str, done: int, num_sessions: int) -> str:
    """A trial is complete when every seed's run evaluated every session: a record that says
    "complete" without those runs (another config asked for) is not."""
    if done == num_sessions:
        return "complete"
    return "runs missing" if recorded == "complete" else recorded


def _trial_row(sweep: Sweep, record: dict[str, Any], num_sessions: int) -> dict[str, Any]:
    trial_id = record["trial_id"]
    params = record["params"]
    cfg = sweep.trial_config(params, trial_id)
    sessions = method_of(cfg).sessions(cfg.data.num_tasks)
    specs = make_specs(cfg)
    rows = {spec.seed: validation_rows(RunDir(spec.run_dir), num_sessions) for spec in specs}
    done = min(len(r) for r in rows.values())
    row: dict[str, Any] = {
        "trial_id": trial_id,
        "number": record["number"],
        "status": _status(record.get("status", "running"), done, num_sessions),
        "tasks_done": done,
        **{name: params[name] for name in sweep.space.names},
        "objective": math.nan,
        "val_acc": math.nan,
        "test_avg_acc": math.nan,
        "test_final_acc": math.nan,
        "mlflow_run_id": record.get("mlflow_run_id"),
    }
    if done:
        val = [validation_objective(r[:done]) for r in rows.values()]
        row["objective"] = sum(v[0] for v in val) / len(val)
        row["val_acc"] = sum(v[1] for v in val) / len(val)
        test = [collect_results(RunDir(spec.run_dir), sessions, upto=done - 1).summary("test") for spec in specs]
        row["test_avg_acc"] = sum(t["avg_acc_task_mean"] for t in test) / len(test)
        row["test_final_acc"] = sum(t["final_acc_task_mean"] for t in test) / len(test)
    return row


def summarize_sweep(sweep: Sweep) -> SweepSummary:
    """Read every trial of ``sweep`` from its directory and pick the best complete one.

    The best trial is the complete trial (every task, every seed) with the highest
    objective (mean validation average accuracy); ties go to the earlier trial.
    """
    num_sessions = sweep.num_sessions
    trials_dir = sweep.dir / "trials"
    records = []
    if trials_dir.is_dir():
        for path in sorted(trials_dir.glob(f"*/{TRIAL_FILE}")):
            records.append(json.loads(path.read_text()))
    columns = ["trial_id", "number", "status", "tasks_done", *sweep.space.names, "objective", "val_acc",
               "test_avg_acc", "test_final_acc", "mlflow_run_id"]
    table = pd.DataFrame([_trial_row(sweep, r, num_sessions) for r in records], columns=columns)
    table = table.sort_values("number", kind="stable").reset_index(drop=True)
    complete = table[(table["status"] == "complete") & table["objective"].notna()]
    best = None
    if len(complete):
        best_row = complete.loc[complete["objective"].idxmax()]
        best = {k: (v.item() if hasattr(v, "item") else v) for k, v in best_row.to_dict().items()}
    start = max(sweep.seeds) + 1
    return SweepSummary(sweep, table, best, list(range(start, start + _RERUN_SEEDS)))


def write_summary(summary: SweepSummary) -> list[Path]:
    """Write ``trials.csv``, ``summary.json`` and (with a best trial) ``best_config.yaml`` into the sweep directory."""
    out_dir = summary.sweep.dir
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "trials.csv", out_dir / "summary.json"]
    summary.table.to_csv(written[0], index=False, float_format="%.6f")
    RunDir(out_dir).write_json("summary.json", summary.to_dict())
    if summary.best is not None:
        cfg = summary.sweep.best_config(summary.best_params, summary.rerun_seeds)
        header = (
            f"# Best configuration of sweep {summary.sweep.name} (trial {summary.best['trial_id']}):\n"
            f"# validation average accuracy {summary.best['objective']:.4f} over seeds {summary.sweep.seeds}.\n"
            f"# Re-run on new seeds: {summary.rerun_command()}\n"
        )
        summary.best_config_path.write_text(header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        written.append(summary.best_config_path)
    return written
