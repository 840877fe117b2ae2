"""A sweep's results: the trials table and the best configuration.

Ray Tune keeps the trials' books (its experiment state in the sweep directory:
which trials exist, their parameters, whether they ended or failed); the run
directories hold what each trial computed (stage markers). Nothing else records
a trial's status, so the table works during a sweep, after a killed one, and
without a Ray cluster or MLflow. Validation numbers are recomputed with the
trials' own :func:`sweeps.trial.validation_objective`; the test numbers are read
here, after the search, and only reported.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipeline.config import config_to_dict
from pipeline.reporting.results import collect_results
from pipeline.running.runner import make_specs
from pipeline.running.stages import method_of, read_result
from pipeline.running.state import RunDir, StageKey

from .config import Sweep
from .trial import TIME_ATTR, validation_objective

__all__ = [
    "SweepSummary",
    "TuneTrial",
    "summarize_sweep",
    "trial_mlflow_run_id",
    "trial_status",
    "tasks_done",
    "tune_trials",
    "validation_rows",
    "write_summary",
]

_RERUN_SEEDS = 5


@dataclass(frozen=True)
class TuneTrial:
    """A trial as Ray Tune's experiment state records it (``status``: Tune's ``TERMINATED``, ``ERROR``…)."""

    trial_id: str
    params: dict[str, Any]
    status: str
    reported: int = 0  # tasks the trial reported to Tune


def tune_trials(sweep: Sweep) -> list[TuneTrial]:
    """Every trial of the sweep's Ray Tune experiment, in the order Tune created them (none before it starts)."""
    if not any(sweep.dir.glob("experiment_state-*.json")):
        return []
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(sweep.dir))
    return [TuneTrial(t.trial_id, dict(t.config), str(t.status), int((t.last_result or {}).get(TIME_ATTR, 0)))
            for t in analysis.trials]


def trial_status(tune_status: str, done: int, num_sessions: int, reported: int = 0) -> str:
    """``complete`` (every task of every seed), ``stopped`` (ended early: the scheduler), ``error``,
    ``running``, or ``runs missing`` (Tune saw every task, the run directories no longer hold them)."""
    if tune_status == "ERROR":
        return "error"
    if done == num_sessions:
        return "complete"
    if tune_status == "TERMINATED":
        return "runs missing" if reported == num_sessions else "stopped"
    return "running"


def tasks_done(sweep: Sweep, trial_id: str, params: dict[str, Any]) -> int:
    """Tasks every seed of the trial has evaluated."""
    cfg = sweep.trial_config(params, trial_id)
    return min(len(validation_rows(RunDir(spec.run_dir), sweep.num_sessions)) for spec in make_specs(cfg))


def trial_mlflow_run_id(sweep: Sweep, trial_id: str, params: dict[str, Any]) -> str | None:
    """The trial's MLflow run, as its first seed's ``tracking.json`` records it (the run itself
    with one seed, its parent with several); ``None`` when it was never tracked."""
    specs = make_specs(sweep.trial_config(params, trial_id))
    state = RunDir(specs[0].run_dir).read_tracking()
    if state is None:
        return None
    return state["run_id"] if len(specs) == 1 else state.get("parent_run_id")


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


def _trial_row(sweep: Sweep, number: int, trial: TuneTrial) -> dict[str, Any]:
    params = trial.params
    cfg = sweep.trial_config(params, trial.trial_id)
    num_sessions = sweep.num_sessions
    sessions = method_of(cfg).sessions(cfg.data.num_tasks)
    specs = make_specs(cfg)
    rows = {spec.seed: validation_rows(RunDir(spec.run_dir), num_sessions) for spec in specs}
    done = min(len(r) for r in rows.values())
    row: dict[str, Any] = {
        "trial_id": trial.trial_id,
        "number": number,
        "status": trial_status(trial.status, done, num_sessions, trial.reported),
        "tasks_done": done,
        **{name: params[name] for name in sweep.space.names},
        "objective": math.nan,
        "val_acc": math.nan,
        "test_avg_acc": math.nan,
        "test_final_acc": math.nan,
        "mlflow_run_id": trial_mlflow_run_id(sweep, trial.trial_id, params),
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
    """Every trial Ray Tune knows, read from its run directories, and the best complete one.

    The best trial is the complete trial (every task, every seed) with the highest
    objective (mean validation average accuracy); ties go to the earlier trial.
    """
    columns = ["trial_id", "number", "status", "tasks_done", *sweep.space.names, "objective", "val_acc",
               "test_avg_acc", "test_final_acc", "mlflow_run_id"]
    table = pd.DataFrame([_trial_row(sweep, n, t) for n, t in enumerate(tune_trials(sweep))], columns=columns)
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
