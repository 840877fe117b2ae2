"""The name of every metric the pipeline logs to MLflow, in one place.

Writers (:mod:`pipeline.tracking.tracker`, :mod:`sweeps.tracking`) and readers
(:mod:`pipeline.reporting.report`, :mod:`sweeps.report`) build names only from here, so a
renamed metric cannot leave a reader looking for the old spelling. ``/`` groups
the names in the MLflow UI (avalanche's ``metric/phase/stream/Task000``):

* ``acc/test/task_003``, ``acc/val/task_003`` — R[s, 3] at step s;
* ``acc/test/task_mean``, ``acc/test/sample_weighted`` (and ``val``), ``acc/test/old_tasks``,
  ``acc/test/new_tasks`` — accuracy after session s;
* ``forgetting/test``, ``bwt/test`` — over the sessions so far;
* ``train/loss``, ``train/accuracy`` — per epoch (step = global epoch);
* ``memory/rank/<layer>``, ``memory/rank_mean``, ``memory/threshold`` — a method's own, after its update;
* ``time/<stage>_s`` — stage wall time; ``final/*`` — the summary at the end;
* a sweep's ``objective``, ``val_acc`` (per task), ``trial/*`` (per trial) and ``best/*`` (the parent run).
"""

from __future__ import annotations

__all__ = [
    "FINAL_IMAGES",
    "HEATMAP_IMAGE",
    "OBJECTIVE",
    "PARAMS_TRAINABLE",
    "TRAIN_ACCURACY",
    "TRAIN_FINAL_LOSS",
    "TRAIN_LOSS",
    "TRIAL_METRICS",
    "VAL_ACC",
    "acc",
    "after_session",
    "best",
    "final",
    "over_sessions",
    "peak_memory",
    "per_task",
    "stage_time",
    "task_mean",
    "train_size",
    "trial",
    "trials_with_status",
]

TRAIN_LOSS = "train/loss"
TRAIN_ACCURACY = "train/accuracy"
TRAIN_FINAL_LOSS = "train/final_loss"
PARAMS_TRAINABLE = "params/trainable"
HEATMAP_IMAGE = "acc/test/accuracy_matrix"
"""The heat map as an MLflow image (the run page's "Model metrics" tab, with a step slider)."""
FINAL_IMAGES = {"matrix": "_final/accuracy_matrix", "curves": "_final/accuracy_curves"}
"""The finished run's matrix and curves, once, at the last step (no slider that opens on step 0).
The "Model metrics" tab sorts its sections by name (String.localeCompare: "_" before letters
and digits), so "_final" is its first section, above "acc_task_id/..." and "acc/..."."""

OBJECTIVE = "objective"
"""A sweep's metric: mean over seeds of the validation average accuracy so far."""
VAL_ACC = "val_acc"
"""Mean over seeds of the validation accuracy after the latest task."""
TRIAL_METRICS = ("val_avg_acc", "val_final_acc", "test_avg_acc", "test_final_acc")
"""What a trial run (``trial/<name>``) and the sweep's parent (``best/<name>``) record at the end."""


def per_task(name: str, task: int) -> str:
    """``<name>/task_003``: a per-task value (``acc/test``, ``acc_task_il/test``…)."""
    return f"{name}/task_{task:03d}"


def task_mean(name: str) -> str:
    """``<name>/task_mean``: the mean of a per-task value over the tasks seen."""
    return f"{name}/task_mean"


def acc(part: str, task: int) -> str:
    """``acc/<part>/task_003``: R[s, task] on the ``test`` or ``val`` split."""
    return per_task(f"acc/{part}", task)


def after_session(part: str, name: str) -> str:
    """``acc/<part>/<name>``: accuracy after a session (``task_mean``, ``sample_weighted``, ``old_tasks``…)."""
    return f"acc/{part}/{name}"


def over_sessions(name: str, part: str) -> str:
    """``forgetting/<part>``, ``bwt/<part>``: a measure over the sessions so far."""
    return f"{name}/{part}"


def stage_time(stage: str) -> str:
    """``time/<stage>_s``: a stage's wall time."""
    return f"time/{stage}_s"


def train_size(task: int) -> str:
    """``data/train_size/task_003``: a task's training images (logged with the split)."""
    return per_task("data/train_size", task)


def peak_memory(kind: str, stage: str) -> str:
    """``memory/peak_rss_mb/<stage>`` (``peak_cuda_allocated_mb`` on a GPU)."""
    return f"memory/peak_{kind}_mb/{stage}"


def final(name: str, part: str = "test") -> str:
    """``final/<name>`` (``final/val_<name>`` for the validation split): the summary at the end of a run."""
    return f"final/{name}" if part == "test" else f"final/{part}_{name}"


def trial(name: str) -> str:
    """``trial/<name>``, one of :data:`TRIAL_METRICS`: a trial's means over seeds."""
    return f"trial/{name}"


def best(name: str) -> str:
    """``best/<name>``: the best trial's value (a parameter or one of :data:`TRIAL_METRICS`)."""
    return f"best/{name}"


def trials_with_status(status: str) -> str:
    """``trials/<status>``: how many of a sweep's trials ended so (``complete``, ``stopped``…)."""
    return f"trials/{status}"
