"""Tables of finished runs from MLflow, with the paper's figures beside them."""

from __future__ import annotations

import os

import pandas as pd

__all__ = ["PAPER_RESULTS", "open_store", "runs_table", "summary_table", "comparison_figure"]

def _published() -> dict[tuple[str, str], dict[str, str]]:
    """Published final and average accuracy in %, keyed by (config ``name``, method): each
    method declares its own (``ContinualMethod.published``)."""
    from model.methods import available_methods, get_method_class

    return {(config, name): figures for name in available_methods() for config, figures in get_method_class(name).published.items()}


PAPER_RESULTS: dict[tuple[str, str], dict[str, str]] = _published()

# Costs per task, logged by pipeline.tracking.run_costs (not percentages).
_COSTS = {
    "params_per_task": "final/trainable_params_per_task",
    "wall_s_per_task": "final/wall_time_per_task_s",
    "peak_rss_mb": "final/peak_rss_mb",
}

_METRICS = {
    "final_acc": "metrics.final/final_acc_task_mean",
    "avg_acc": "metrics.final/avg_acc_task_mean",
    "final_acc_weighted": "metrics.final/final_acc_sample_weighted",
    "avg_acc_weighted": "metrics.final/avg_acc_sample_weighted",
    "forgetting": "metrics.final/forgetting",
    "bwt": "metrics.final/bwt",
    "val_final_acc": "metrics.final/val_final_acc_task_mean",
    "val_avg_acc": "metrics.final/val_avg_acc_task_mean",
    # after the last task (the latest value of a per-session metric): the field's other measures
    "final_task_il": "metrics.acc_task_il/test/task_mean",
    "final_task_id": "metrics.acc_task_id/test/task_mean",
    "final_old_tasks": "metrics.acc/test/old_tasks",
    "final_new_tasks": "metrics.acc/test/new_tasks",
}


def open_store(tracking_uri: str | None = None, experiment: str | None = None):
    """An :class:`mlflow.MlflowClient` on the tracking store and the experiment ids to search.

    Args:
        tracking_uri: the store (default: as ``inflora run`` resolves it).
        experiment: one experiment by name; every experiment when ``None``.

    Raises:
        LookupError: no experiment of that name.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    from .config import TrackingConfig
    from .tracking import resolve_tracking_uri

    uri = tracking_uri or resolve_tracking_uri(TrackingConfig())
    client = MlflowClient(tracking_uri=uri)
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise LookupError(f"no MLflow experiment named {experiment!r} in {uri}")
        return client, [found.experiment_id]
    return client, [e.experiment_id for e in client.search_experiments()]


def runs_table(experiment: str | None = None, tracking_uri: str | None = None, sweep: str | None = None) -> pd.DataFrame:
    """One row per finished run: config name, method, seed and the final metrics.

    Uses an explicit :class:`mlflow.MlflowClient`: ``mlflow.set_tracking_uri`` would
    change the process-wide (and child-process) tracking URI as a side effect.
    """
    client, experiment_ids = open_store(tracking_uri, experiment)
    filters = ["attributes.status = 'FINISHED'"]
    if sweep:
        parent = _find_parent(client, experiment_ids, sweep)
        filters.append(f"tags.mlflow.parentRunId = '{parent}'")
    rows, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, " and ".join(filters), max_results=1000, page_token=token)
        for run in page:
            tags, metrics = run.data.tags, run.data.metrics
            if "method" not in tags:
                continue
            row = {"config": tags.get("config_name"), "method": tags["method"], "seed": int(tags.get("seed", -1)),
                   "run_id": run.info.run_id}
            for name, key in _METRICS.items():
                value = metrics.get(key.removeprefix("metrics."))
                row[name] = value * 100 if value is not None else float("nan")
            for name, key in _COSTS.items():
                row[name] = metrics.get(key, float("nan"))
            rows.append(row)
        token = page.token
        if not token:
            break
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values(["config", "method", "seed"]).reset_index(drop=True)


def _find_parent(client, experiment_ids: list[str], sweep: str) -> str:
    runs = client.search_runs(experiment_ids, filter_string=f"attributes.run_name = '{sweep}'")
    if runs:
        return runs[0].info.run_id
    return sweep  # assume a run id


def summary_table(runs: pd.DataFrame, paper: bool = True) -> pd.DataFrame:
    """Mean ± std over seeds per (config, method), with the paper's figures when known."""
    rows = []
    for (config, method), group in runs.groupby(["config", "method"], sort=True):
        row: dict[str, object] = {"config": config, "method": method, "seeds": len(group)}
        for name in _METRICS:
            values = group[name].dropna()
            if values.empty:
                continue
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            row[name] = f"{values.mean():.2f} ± {std:.2f}"
        for name in _COSTS:
            if name in group and not group[name].dropna().empty:
                row[name] = f"{group[name].mean():.4g}"
        if paper and (config, method) in PAPER_RESULTS:
            row.update(PAPER_RESULTS[(config, method)])
        rows.append(row)
    return pd.DataFrame(rows).set_index(["config", "method"])


def comparison_figure(runs: pd.DataFrame, title: str = "final and average accuracy (mean ± std over seeds)"):
    """Bar chart of final and average accuracy per (config, method), with the seed std as error bars."""
    from .plots import plt

    grouped = runs.groupby(["config", "method"], sort=True)[["final_acc", "avg_acc"]]
    mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    labels = [f"{c}\n{m}" if runs["config"].nunique() > 1 else m for c, m in mean.index]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) + 1.5), 3.6))
    x = range(len(labels))
    width = 0.38
    ax.bar([i - width / 2 for i in x], mean["final_acc"], width, yerr=std["final_acc"], capsize=3, label="final")
    ax.bar([i + width / 2 for i in x], mean["avg_acc"], width, yerr=std["avg_acc"], capsize=3, label="average")
    ax.set_xticks(list(x), labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
