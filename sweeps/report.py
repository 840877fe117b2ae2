"""Find a sweep from MLflow (``inflora report --sweep NAME``) and read its results.

The parent run carries the sweep directory (tag ``sweep.dir``); when that
directory is reachable the full summary is read from it
(:func:`sweeps.results.summarize_sweep`), otherwise the trials table is built
from the child runs' metrics and the best configuration from the parent's
``best.*`` tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.tracking import metric_keys as mk

from .config import SWEEP_FILE, load_sweep
from .results import SweepSummary, summarize_sweep

__all__ = ["MlflowSweep", "find_sweep"]


@dataclass
class MlflowSweep:
    """A sweep as MLflow knows it.

    Attributes:
        parent_run_id: the sweep's parent run.
        tags: the parent run's tags (``best.params``, ``best.rerun_command``…).
        metrics: the parent run's latest metrics (``best/val_avg_acc``…).
        trials: one row per child run: run id, name, status, ``sweep.status`` and the trial metrics.
        summary: the summary read from the sweep directory, when it is reachable.
    """

    name: str
    parent_run_id: str
    tracking_uri: str
    tags: dict[str, str]
    metrics: dict[str, float]
    trials: pd.DataFrame
    summary: SweepSummary | None


def find_sweep(sweep: str, tracking_uri: str | None = None, experiment: str | None = None) -> MlflowSweep:
    """The sweep whose parent run is named ``sweep`` (or has run id ``sweep``).

    Raises:
        LookupError: no such sweep in the tracking store.
    """
    from mlflow.exceptions import MlflowException

    from pipeline.tracking.store import open_store

    client, experiment_ids = open_store(tracking_uri, experiment)
    uri = client.tracking_uri
    name = sweep.replace("'", "")
    parents = client.search_runs(
        experiment_ids, f"tags.`sweep.role` = 'parent' and tags.`sweep.name` = '{name}'", order_by=["attributes.start_time DESC"]
    )
    if parents:
        parent = parents[0]
    else:
        try:
            parent = client.get_run(sweep)
        except MlflowException:
            raise LookupError(f"no sweep named {sweep!r} (nor a run with that id) in {uri}") from None
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    rows = []
    for run in children:
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "name": run.info.run_name,
            "trial_id": run.data.tags.get("sweep.trial_id"),
            "mlflow_status": run.info.status,
            "status": run.data.tags.get("sweep.status", "running"),
        }
        for key in (mk.OBJECTIVE, *map(mk.trial, mk.TRIAL_METRICS)):
            row[key] = run.data.metrics.get(key)
        rows.append(row)
    trials = pd.DataFrame(rows)
    if len(trials):
        trials = trials.sort_values("trial_id").reset_index(drop=True)
    summary = None
    sweep_dir = parent.data.tags.get("sweep.dir")
    if sweep_dir and (Path(sweep_dir) / SWEEP_FILE).is_file():
        summary = summarize_sweep(load_sweep(sweep_dir))
    return MlflowSweep(
        name=parent.data.tags.get("sweep.name", parent.info.run_name),
        parent_run_id=parent.info.run_id,
        tracking_uri=uri,
        tags=dict(parent.data.tags),
        metrics=dict(parent.data.metrics),
        trials=trials,
        summary=summary,
    )
