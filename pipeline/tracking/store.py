"""The MLflow tracking store: where it is, how to open it, how to browse it.

Writers (:mod:`pipeline.tracking.tracker`, :mod:`sweeps.tracking`) and readers
(:mod:`pipeline.reporting.report`, :mod:`sweeps.report`, the CLI) all find the store here,
so none of them imports another to learn the URI.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from ..running.lock import store_lock

if TYPE_CHECKING:  # the store needs no config module (nor the model it imports)
    from ..config import TrackingConfig

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "MODEL_TRAINING_KIND",
    "browse_hint",
    "mark_model_training",
    "open_experiment",
    "open_store",
    "resolve_tracking_uri",
]

# MLflow 3 records an experiment's kind (GenAI or model training) in this tag. The
# 3.17 UI also keeps a GenAI / Model training switch in the browser (GenAI at first),
# which wins over the tag there: `inflora ui` prints links that set it (pipeline/cli.py).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def resolve_tracking_uri(cfg: TrackingConfig | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` wins, then ``tracking.uri``, then ``sqlite:///./mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (cfg.uri if cfg is not None else None)
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def browse_hint(tracking_uri: str) -> str:
    """How to look at a tracking store: a server is opened in a browser (``mlflow ui
    --backend-store-uri http://…`` would be meaningless), a local store with ``inflora ui``."""
    if tracking_uri.startswith(("http://", "https://")):
        # the compose stack's runner logs to http://mlflow:5000, published on the host's 127.0.0.1
        local = "http://127.0.0.1:5000" if "://mlflow:" in tracking_uri else tracking_uri
        return f"browse: open {local} in a browser"
    return f"browse with: inflora ui   (or: mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --host 127.0.0.1)"


def _client(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite store go next to its database file (``mlartifacts/``),
    not to ``./mlruns`` of whatever directory the command ran in; servers decide themselves."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return (db.parent / "mlartifacts" / safe).resolve().as_uri()


def mark_model_training(client, experiment_id: str) -> None:
    """Tag an experiment as model training, unless someone chose its kind already."""
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)


def open_experiment(uri: str, name: str):
    """A client on ``uri`` and the id of experiment ``name``, created (as model training) if new."""
    with store_lock(uri):  # a fresh sqlite store is created (migrated) by one process at a time
        client = _client(uri)
        found = client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else client.create_experiment(name, _artifact_location(uri, name))
    mark_model_training(client, experiment_id)
    return client, experiment_id


def open_store(tracking_uri: str | None = None, experiment: str | None = None):
    """An :class:`mlflow.MlflowClient` on the tracking store and the experiment ids to search.

    Uses an explicit client: ``mlflow.set_tracking_uri`` would change the
    process-wide (and child-process) tracking URI as a side effect.

    Args:
        tracking_uri: the store (default: as ``inflora run`` resolves it).
        experiment: one experiment by name; every experiment when ``None``.

    Raises:
        LookupError: no experiment of that name.
    """
    uri = tracking_uri or resolve_tracking_uri()
    client = _client(uri)
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise LookupError(f"no MLflow experiment named {experiment!r} in {uri}")
        return client, [found.experiment_id]
    return client, [e.experiment_id for e in client.search_experiments()]
