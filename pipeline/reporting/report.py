"""Tables of finished runs from MLflow, with the published figures beside the runs that share their protocol.

* **Groups.** Runs are grouped by the hash of their resolved config with the seed left
  out (the ``result_key`` tag, :meth:`pipeline.config.RunConfig.result_key`), so a
  2-epoch and a 10-epoch run of one config name are never averaged. A group counts
  distinct seeds; a seed logged twice (a run re-logged to a new MLflow run) counts once,
  its latest run. When a config name spans several groups, each is printed with the
  settings that differ. Sweep trials stay out unless asked (``include_sweeps``).
* **Published figures** (:mod:`model.methods.published`) print beside a group only when
  its runs follow the figure's protocol: the backbone weights, the data set, split and
  class order, the task count, the epochs and the method's own optimizer and settings
  (:data:`PROTOCOL_KEYS`, :data:`TRAINING_KEYS`, ``method.<name>.*``). Otherwise a note says which protocol
  the figure belongs to and what differs.
* **Columns** fit a terminal: final and average accuracy and forgetting (%), mean ± std
  over seeds (the mean alone for one seed); ``wide`` adds the rest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from model.methods.published import PublishedFigure, figures_of

from ..tracking.store import open_store

__all__ = [
    "PROTOCOL_KEYS",
    "TRAINING_KEYS",
    "FigureMatch",
    "published_figures",
    "paper_configs",
    "match_figure",
    "open_store",
    "runs_table",
    "summary_table",
    "summary_notes",
    "comparison_figure",
    "comparison_stats",
]

_logger = logging.getLogger(__name__)

PAPER_DIR = Path(__file__).resolve().parents[2] / "configs" / "paper"

PROTOCOL_KEYS = (
    "backbone.name", "backbone.overrides", "backbone.reset_final_norm",
    "data.name", "data.num_tasks", "data.class_order", "data.val_fraction", "data.test_fraction", "data.split_seed",
    "data.split_file", "data.split_file_test", "data.max_train_per_class", "data.image_size", "data.normalization",
    "data.options",
)  # fmt: skip
"""What a figure's protocol fixes besides the weights: the backbone and the task sequence."""

TRAINING_KEYS = (
    "train.optimizer", "train.lr", "train.epochs", "train.batch_size", "train.weight_decay", "train.momentum",
    "train.scheduler", "train.milestones", "train.gamma", "train.head_lr",
)  # fmt: skip
"""The method's own optimizer and schedule (precision, compilation and eval batch change no result)."""

# Per-run columns: accuracies in % (× 100), then costs per task.
_METRICS = {
    "final_acc": "final/final_acc_task_mean",
    "avg_acc": "final/avg_acc_task_mean",
    "final_acc_weighted": "final/final_acc_sample_weighted",
    "avg_acc_weighted": "final/avg_acc_sample_weighted",
    "forgetting": "final/forgetting",
    "bwt": "final/bwt",
    "val_final_acc": "final/val_final_acc_task_mean",
    "val_avg_acc": "final/val_avg_acc_task_mean",
    # after the last task (the latest value of a per-session metric): the field's other measures
    "final_task_il": "acc_task_il/test/task_mean",
    "final_task_id": "acc_task_id/test/task_mean",
    "final_old_tasks": "acc/test/old_tasks",
    "final_new_tasks": "acc/test/new_tasks",
}
# peak RSS: the largest stage's resident-set peak (reset per stage: model.evaluation.reset_peak_memory).
_COSTS = {
    "params_per_task": "final/trainable_params_per_task",
    "wall_s_per_task": "final/wall_time_per_task_s",
    "peak_rss_mb": "final/peak_rss_mb",
}
_DEFAULT = ("final_acc", "avg_acc", "forgetting")
_HEADERS = {
    "final_acc": "final", "avg_acc": "average", "forgetting": "forgetting", "bwt": "BWT",
    "final_acc_weighted": "final (w)", "avg_acc_weighted": "average (w)", "val_final_acc": "val final",
    "val_avg_acc": "val average", "final_task_il": "task-IL", "final_task_id": "task-id", "final_old_tasks": "old tasks",
    "final_new_tasks": "new tasks", "params_per_task": "params/task", "wall_s_per_task": "s/task", "peak_rss_mb": "peak RSS MB",
}  # fmt: skip
# Params that name where a run lives, not what it computes.
_PLACE_KEYS = ("seed", "output_dir", "name")
_PLACE_PREFIXES = ("tracking.", "resources.")


# --------------------------------------------------------------------------- figures
def _params(cfg) -> dict[str, str]:
    """A config flattened as MLflow params are logged (``pipeline.tracking.tracker``: ``str`` of each value)."""
    from ..config import config_to_dict, flatten

    return {k: str(v) for k, v in flatten(config_to_dict(cfg)).items()}


@functools.lru_cache(maxsize=1)
def paper_configs() -> dict[str, dict[str, str]]:
    """Every ``configs/paper/*.yaml`` by file name (stem), flattened like a run's params."""
    from ..config import load_config

    out = {}
    for path in sorted(PAPER_DIR.glob("*.yaml")):
        try:
            out[path.stem] = _params(load_config(path))
        except Exception as exc:  # a config this checkout cannot load (a data set not registered here)
            _logger.debug("paper config %s not loaded: %s", path, exc)
    return out


def _cell_of(config: str) -> tuple[str, int]:
    cfg = _protocol_config(config, None)
    return (cfg["data.name"], int(cfg["data.num_tasks"])) if cfg else ("", 0)


def _protocol_config(protocol: str, method: str | None) -> dict[str, str] | None:
    """The paper config a protocol names: by file name, or (older declarations) by config
    ``name``, preferring the one that runs ``method``."""
    configs = paper_configs()
    named = [c for c in configs.values() if c["name"] == protocol]
    for cfg in named:
        if cfg["method.name"] == method:
            return cfg
    return configs.get(protocol) or (named[0] if named else None)


def published_figures() -> dict[str, list[PublishedFigure]]:
    """Every method's declared figures (``declare_method(..., published=...)``: no model code imported), by method."""
    from model.methods.registry import available_methods, declaration

    return {name: figures_of(declaration(name).published, _cell_of) for name in available_methods()}


def _normalised(params: Mapping[str, str], keys: tuple[str, ...]) -> dict[str, str]:
    """The protocol values of ``params``: mappings by their flattened entries (``data.options.*``;
    an empty one has none), paths by file name, settings the optimizer ignores dropped."""
    out: dict[str, str] = {}
    for key in keys:
        entries = {k: v for k, v in params.items() if k.startswith(key + ".")}
        if not entries and params.get(key, "None") != "{}":
            entries = {key: params.get(key, "None")}
        out.update(entries)
    for key in ("data.split_file", "data.split_file_test"):
        if out.get(key, "None") != "None":
            out[key] = Path(out[key]).name
    if "train.optimizer" in out and out["train.optimizer"] != "sgd":
        out.pop("train.momentum", None)
    if "train.scheduler" in out and out["train.scheduler"] != "multistep":
        out.pop("train.milestones", None)
        out.pop("train.gamma", None)
    return out


def _weights(params: Mapping[str, str]) -> str:
    if params.get("backbone.checkpoint", "None") != "None" or params.get("backbone.pretrained") == "True":
        return f"pretrained {params.get('backbone.name')}"
    return "random"


def _training_config(protocol_cfg: Mapping[str, str], method: str) -> dict[str, str] | None:
    """The paper config of ``method`` on the protocol of ``protocol_cfg`` (same backbone and data)."""
    if protocol_cfg["method.name"] == method:
        return dict(protocol_cfg)
    wanted = _normalised(protocol_cfg, PROTOCOL_KEYS)
    for cfg in paper_configs().values():
        if cfg["method.name"] == method and _normalised(cfg, PROTOCOL_KEYS) == wanted:
            return cfg
    return None


@dataclass(frozen=True)
class FigureMatch:
    """A published figure against one group of runs: ``differs`` is empty when the protocols match."""

    figure: PublishedFigure
    differs: tuple[str, ...]
    reason: str = ""

    @property
    def matches(self) -> bool:
        return not self.differs and not self.reason


def match_figure(params: Mapping[str, str], figure: PublishedFigure, method: str) -> FigureMatch:
    """Compare a run's params (as logged) with the protocol of ``figure``, a figure of ``method``."""
    protocol = _protocol_config(figure.protocol, method)
    if protocol is None:
        return FigureMatch(figure, (), f"no config here follows its protocol ({figure.protocol})")
    training = _training_config(protocol, method)
    if training is None:
        return FigureMatch(figure, (), f"no config here runs {method} with its own optimizer on protocol {figure.protocol}")
    keys = TRAINING_KEYS + tuple(k for k in training if k.startswith(f"method.{method}."))  # its own settings too
    want = {**_normalised(protocol, PROTOCOL_KEYS), **_normalised(training, keys)}
    have = {**_normalised(params, PROTOCOL_KEYS), **_normalised(params, keys)}
    differs = [f"backbone weights {_weights(params)}"] if _weights(params) != _weights(protocol) else []
    keys = sorted(set(want) | set(have), key=lambda k: (k not in want, k))
    differs += [f"{k} {have.get(k, '(unset)')}" for k in keys if have.get(k) != want.get(k) and not (k == "backbone.name" and differs)]
    return FigureMatch(figure, tuple(differs))


def _related(figures: dict[str, list[PublishedFigure]], method: str, params: Mapping[str, str]) -> list[PublishedFigure]:
    """The figures of ``method`` on the same data set and task count as a run."""
    dataset, tasks = params.get("data.name"), params.get("data.num_tasks")
    return [f for f in figures.get(method, []) if f.dataset == dataset and str(f.tasks) == tasks]


# --------------------------------------------------------------------------- runs
def _group_key(tags: Mapping[str, str], params: Mapping[str, str]) -> str:
    """The run's config hash without the seed: its ``result_key`` tag, or (runs logged before
    the tag) a hash of its params without the seed and where it lives."""
    if tags.get("result_key"):
        return tags["result_key"]
    kept = {k: v for k, v in params.items() if k not in _PLACE_KEYS and not k.startswith(_PLACE_PREFIXES)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:8]


def runs_table(
    experiment: str | None = None, tracking_uri: str | None = None, sweep: str | None = None, include_sweeps: bool = False
) -> pd.DataFrame:
    """One row per finished run: config name, method, seed, group and the final metrics (accuracies in %).

    Args:
        experiment: MLflow experiment name (every experiment when ``None``).
        tracking_uri: the store.
        sweep: only the runs under this parent run (a comparison's or a sweep's, by name or id).
        include_sweeps: keep sweep trials (tag ``sweep.name``), left out by default.

    The column ``params`` holds each run's logged config (for protocol checks and the
    settings that differ between groups). Uses an explicit :class:`mlflow.MlflowClient`:
    ``mlflow.set_tracking_uri`` would change the process-wide tracking URI.
    """
    client, experiment_ids = open_store(tracking_uri, experiment)
    filters = ["attributes.status = 'FINISHED'"]
    if sweep:
        filters.append(f"tags.mlflow.parentRunId = '{_find_parent(client, experiment_ids, sweep)}'")
    rows, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, " and ".join(filters), max_results=1000, page_token=token)
        for run in page:
            tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
            if "method" not in tags or ("sweep.name" in tags and not (include_sweeps or sweep)):
                continue
            row = {"config": tags.get("config_name"), "method": tags["method"], "seed": int(tags.get("seed", -1)),
                   "group": _group_key(tags, params), "sweep": tags.get("sweep.name"), "run_id": run.info.run_id,
                   "start_time": run.info.start_time}  # fmt: skip
            for name, key in _METRICS.items():
                value = metrics.get(key)
                row[name] = value * 100 if value is not None else float("nan")
            for name, key in _COSTS.items():
                row[name] = metrics.get(key, float("nan"))
            row["params"] = dict(params)
            rows.append(row)
        token = page.token
        if not token:
            break
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values(["config", "method", "group", "seed", "start_time"]).reset_index(drop=True)


def _find_parent(client, experiment_ids: list[str], sweep: str) -> str:
    runs = client.search_runs(experiment_ids, filter_string=f"attributes.run_name = '{sweep}'")
    if runs:
        return runs[0].info.run_id
    return sweep  # assume a run id


# --------------------------------------------------------------------------- summary
def _distinct_seeds(group: pd.DataFrame) -> pd.DataFrame:
    """One run per seed: the latest logged (a seed re-logged to a new MLflow run counts once)."""
    if "start_time" in group:
        group = group.sort_values("start_time")
    return group.drop_duplicates("seed", keep="last")


def _groups(runs: pd.DataFrame):
    """``(config, method, group key, label, runs of distinct seeds)`` per group, sorted; the label
    gets ``#k`` when its config name and method span several groups."""
    key = runs["group"] if "group" in runs else pd.Series("", index=runs.index)
    frame = runs.assign(group=key.fillna(""))
    spans = frame.groupby(["config", "method"])["group"].nunique()
    for (config, method, group), rows in frame.groupby(["config", "method", "group"], sort=True):
        label = str(config)
        if spans[(config, method)] > 1:
            index = sorted(frame[(frame["config"] == config) & (frame["method"] == method)]["group"].unique()).index(group)
            label = f"{config}#{index + 1}"
        yield config, method, group, label, _distinct_seeds(rows)


def _mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f}±{values.std(ddof=1):.2f}"


def _first_params(rows: pd.DataFrame) -> dict[str, str]:
    return dict(rows["params"].iloc[0]) if "params" in rows and isinstance(rows["params"].iloc[0], Mapping) else {}


def _matches(runs: pd.DataFrame):
    """``(label, method, matches)`` per group: every related figure checked against its protocol."""
    figures = published_figures()
    for _config, method, _group, label, rows in _groups(runs):
        params = _first_params(rows)
        yield label, method, rows, [match_figure(params, f, method) for f in _related(figures, method, params)]


def summary_table(runs: pd.DataFrame, paper: bool = True, wide: bool = False) -> pd.DataFrame:
    """Mean ± std over distinct seeds per group, with the published figures whose protocol the group follows.

    Args:
        runs: :func:`runs_table`'s frame.
        paper: add ``published``: final / average of the figure whose protocol the group follows
            (``—`` when none; the stds, sources and why a figure is left out: :func:`summary_notes`).
        wide: every column (weighted and validation accuracies, task-IL, task-id, old/new
            tasks, BWT, params and seconds per task); by default final, average, forgetting.
    """
    columns = list(_METRICS) + list(_COSTS) if wide else list(_DEFAULT)
    rows = []
    for label, method, group, found in _matches(runs):
        row: dict[str, object] = {"config": label, "method": method, "seeds": group["seed"].nunique()}
        for name in columns:
            if name in group:
                row[_HEADERS[name]] = _mean_std(group[name]) if name in _METRICS else f"{group[name].mean():.4g}"
        if paper:
            matched = [m.figure for m in found if m.matches]
            row["published"] = matched[0].means() if matched else "—"
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.drop(columns=[c for c in table if (table[c] == "—").all()]) if not table.empty else table


def summary_notes(runs: pd.DataFrame, paper: bool = True) -> list[str]:
    """Lines under the table: the settings that differ where a config name spans several
    groups, and for each published figure beside a group, its source, or why it is left out."""
    lines = []
    for (config, method), part in runs.groupby(["config", "method"], sort=True):
        if "group" not in part or part["group"].nunique() < 2:
            continue
        groups = [(label, _first_params(rows)) for c, m, _g, label, rows in _groups(part)]
        keys = sorted({k for _, p in groups for k in p} - set(_PLACE_KEYS))
        keys = [k for k in keys if not k.startswith(_PLACE_PREFIXES) and len({p.get(k) for _, p in groups}) > 1]
        lines.append(f"{config} / {method} spans {len(groups)} groups; they differ in:")
        lines += [f"  {label}: " + ", ".join(f"{k}={p.get(k)}" for k in keys) for label, p in groups]
    if paper:
        for label, method, _rows, found in _matches(runs):
            for m in found:
                f = m.figure
                head = f"{label} / {method}: {f.source}{' (secondary copy)' if f.secondary else ''} {f.final} / {f.average}"
                if m.matches:
                    lines.append(f"{head}: same protocol ({f.protocol})")
                else:
                    why = m.reason or "here " + ", ".join(m.differs[:4]) + (", …" if len(m.differs) > 4 else "")
                    lines.append(f"{head}: left out, it belongs to protocol {f.protocol}; {why}")
    return lines


def comparison_stats(runs: pd.DataFrame) -> pd.DataFrame:
    """Per group: the label, final and average accuracy (mean and seed std, in %), and the
    published figure whose protocol the group follows (NaN where none does)."""
    rows = []
    for label, method, group, found in _matches(runs):
        matched = next((m.figure for m in found if m.matches), None)
        row = {"config": label, "method": method}
        for name, column in (("final", "final_acc"), ("average", "avg_acc")):
            values = group[column]
            row[f"{name}_mean"] = values.mean()
            row[f"{name}_std"] = values.std(ddof=1) if values.count() > 1 else 0.0
            row[f"published_{name}"] = matched.value(name) if matched is not None else float("nan")
        rows.append(row)
    stats = pd.DataFrame(rows)
    several = stats["config"].nunique() > 1
    stats["label"] = [f"{c}\n{m}" if several else m for c, m in zip(stats["config"], stats["method"])]
    return stats


def comparison_figure(runs: pd.DataFrame, title: str = "final and average accuracy (mean ± std over seeds)"):
    """Bar chart of final and average accuracy per group, the seed std as error bars, and the
    published figures whose protocol the group follows as marked points."""
    from .plots import accuracy_bars

    return accuracy_bars(comparison_stats(runs), title)
