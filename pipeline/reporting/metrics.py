"""Continual-learning metrics from the accuracy matrix R.

``R[i, j]`` is the accuracy on task j's test split after session i (NaN where
task j is not seen yet). For the one-task-per-session methods i indexes tasks.

* accuracy after session i — ``task_mean``: the mean of R[i, j] over seen tasks
  (the paper's figure); ``sample_weighted``: the accuracy over every seen test
  sample (what the reference code logs as ``top1``).
* final accuracy — accuracy after the last session.
* average accuracy — mean over sessions of the accuracy after each session.
* forgetting (Chaudhry et al., 2018) — mean over tasks learned before the last
  session of (best earlier accuracy − final accuracy).
* backward transfer (Lopez-Paz & Ranzato, 2017) — mean over those tasks of
  (final accuracy − accuracy right after the task was learned).

Per-sample metrics the field reports beside R (the reference code logs the first
two as ``cnn_accy_with_task`` and ``cnn_accy_task``, ``methods/inflora.py: _eval_cnn``):

* task-incremental accuracy — the task id is given: argmax within the true
  task's head;
* task-id prediction accuracy — the head holding the argmax over all seen heads
  is the true task's;
* old / new accuracy after session i — sample-weighted accuracy on the tasks
  learned before session i (stability) and on those learned in it (plasticity).

Empty splits (``val_fraction: 0``) have no accuracy: NaN, without a numpy
``Mean of empty slice`` warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "accuracy",
    "accuracy_matrix",
    "old_new_accuracy",
    "prediction_accuracies",
    "resource_summary",
    "session_accuracy",
    "summarize",
    "task_of_labels",
]


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of ``predictions == labels``; NaN (no warning) when there is no sample."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float((predictions == labels).mean()) if labels.size else float("nan")


def task_of_labels(labels: np.ndarray, head_sizes: Sequence[int]) -> np.ndarray:
    """Index of the head that owns each global label (heads hold consecutive label ranges).

    Args:
        labels: ``(N,)`` global labels (positions in the class order).
        head_sizes: classes of each head, in head order (``[10, 10, 10]``).

    Raises:
        ValueError: a label beyond the heads.
    """
    labels = np.asarray(labels, dtype=np.int64)
    ends = np.cumsum(head_sizes)
    if labels.size and (labels.min() < 0 or labels.max() >= ends[-1]):
        raise ValueError(f"labels must lie in [0, {int(ends[-1])}), got {int(labels.min())}..{int(labels.max())}")
    return np.searchsorted(ends, labels, side="right")


def prediction_accuracies(
    labels: np.ndarray,
    class_il: np.ndarray,
    task_il: np.ndarray,
    task_id: np.ndarray,
    head_sizes: Sequence[int],
) -> dict[str, float]:
    """Class-incremental, task-incremental and task-id accuracy of one split's predictions.

    Args:
        labels: ``(N,)`` global labels.
        class_il: argmax over every seen head.
        task_il: argmax within the true task's head (as a global label).
        task_id: index of the head holding the class-incremental argmax.
        head_sizes: classes of each seen head, in order.

    Returns:
        ``{"class_il", "task_il", "task_id"}`` → accuracy in [0, 1] (NaN when empty).
    """
    return {
        "class_il": accuracy(class_il, labels),
        "task_il": accuracy(task_il, labels),
        "task_id": accuracy(task_id, task_of_labels(labels, head_sizes)),
    }


def old_new_accuracy(matrix: np.ndarray, counts: Sequence[int], learned_at: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per session i: sample-weighted accuracy on old tasks (learned before i) and on new ones (learned at i).

    Args:
        matrix: ``(sessions, tasks)`` accuracies, NaN where unseen.
        counts: test samples of each task.
        learned_at: the session in which each task was trained.

    Returns:
        ``(old, new)``, each ``(sessions,)``; ``old[0]`` is NaN (nothing is old yet).
    """
    matrix = np.asarray(matrix, dtype=float)
    counts_arr = np.asarray(counts, dtype=float)
    learned = np.asarray(learned_at)
    old, new = np.full(len(matrix), np.nan), np.full(len(matrix), np.nan)
    for i, row in enumerate(matrix):
        for out, tasks in ((old, learned < i), (new, learned == i)):
            tasks = tasks & ~np.isnan(row)
            if counts_arr[tasks].sum() > 0:
                out[i] = float((row[tasks] * counts_arr[tasks]).sum() / counts_arr[tasks].sum())
    return old, new


def resource_summary(
    trainable_parameters: Sequence[int],
    wall_time_s: Sequence[float],
    peak_rss_mb: Sequence[float],
    peak_cuda_mb: Sequence[float | None] = (),
) -> dict[str, float]:
    """Per-run summary of per-task costs: trainable parameters, wall time, peak memory.

    Args:
        trainable_parameters: parameters trained in each task.
        wall_time_s: wall time of each task (every stage of it).
        peak_rss_mb: peak resident memory seen in each task.
        peak_cuda_mb: peak allocated GPU memory of each task (``None`` off the GPU).

    Returns:
        Totals, means and maxima; ``memory/peak_cuda_mb`` only with a GPU value.
    """
    params = np.asarray(trainable_parameters, dtype=float)
    times = np.asarray(wall_time_s, dtype=float)
    out = {
        "params/trainable_mean": float(params.mean()) if params.size else float("nan"),
        "params/trainable_max": float(params.max()) if params.size else float("nan"),
        "time/task_mean_s": float(times.mean()) if times.size else float("nan"),
        "time/total_s": float(times.sum()),
        "memory/peak_rss_mb": float(max(peak_rss_mb)) if len(peak_rss_mb) else float("nan"),
    }
    cuda = [float(v) for v in peak_cuda_mb if v is not None]
    if cuda:
        out["memory/peak_cuda_mb"] = max(cuda)
    return out


def accuracy_matrix(rows: Sequence[Mapping[int, float]], num_tasks: int) -> pd.DataFrame:
    """Accuracy matrix with sessions as rows and ``task_000``… as columns."""
    data = np.full((len(rows), num_tasks), np.nan)
    for i, row in enumerate(rows):
        for j, acc in row.items():
            data[i, int(j)] = acc
    return pd.DataFrame(
        data,
        index=pd.Index([f"after_{i:03d}" for i in range(len(rows))], name="session"),
        columns=[f"task_{j:03d}" for j in range(num_tasks)],
    )


def session_accuracy(matrix: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per session: (task-mean accuracy, sample-weighted accuracy) over seen tasks."""
    matrix = np.asarray(matrix, dtype=float)
    seen = ~np.isnan(matrix)
    task_mean = np.full(len(matrix), np.nan)
    weighted = np.full(len(matrix), np.nan)
    for i in range(len(matrix)):
        if seen[i].any():  # a row without any accuracy (an empty validation split) stays NaN
            task_mean[i] = matrix[i, seen[i]].mean()
            if counts[seen[i]].sum() > 0:
                weighted[i] = (matrix[i, seen[i]] * counts[seen[i]]).sum() / counts[seen[i]].sum()
    return task_mean, weighted


def _best(column: np.ndarray) -> float:
    """Largest accuracy of a column, NaN (no ``All-NaN slice`` warning) when none was measured."""
    finite = column[~np.isnan(column)]
    return float(finite.max()) if finite.size else float("nan")


def summarize(matrix: np.ndarray, counts: Sequence[int], learned_at: Sequence[int]) -> dict[str, float]:
    """Final/average accuracy, forgetting and backward transfer of an accuracy matrix.

    Args:
        matrix: ``(sessions, tasks)`` accuracies in [0, 1], NaN where unseen.
        counts: test samples of each task.
        learned_at: the session in which each task was trained.

    Returns:
        Metric name → value; forgetting and BWT are NaN with a single session.
    """
    matrix = np.asarray(matrix, dtype=float)
    counts_arr = np.asarray(counts, dtype=float)
    task_mean, weighted = session_accuracy(matrix, counts_arr)
    last = len(matrix) - 1
    earlier = [j for j in range(matrix.shape[1]) if learned_at[j] < last]
    if earlier:
        forgetting = float(np.mean([_best(matrix[:last, j]) - matrix[last, j] for j in earlier]))
        bwt = float(np.mean([matrix[last, j] - matrix[learned_at[j], j] for j in earlier]))
    else:
        forgetting = bwt = float("nan")
    return {
        "final_acc_task_mean": float(task_mean[-1]),
        "final_acc_sample_weighted": float(weighted[-1]),
        "avg_acc_task_mean": float(task_mean.mean()),
        "avg_acc_sample_weighted": float(weighted.mean()),
        "forgetting": forgetting,
        "bwt": bwt,
    }
