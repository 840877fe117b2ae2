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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["accuracy_matrix", "session_accuracy", "summarize"]


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
    seen = ~np.isnan(matrix)
    task_mean = np.array([matrix[i, seen[i]].mean() for i in range(len(matrix))])
    weighted = np.array([(matrix[i, seen[i]] * counts[seen[i]]).sum() / counts[seen[i]].sum() for i in range(len(matrix))])
    return task_mean, weighted


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
        forgetting = float(np.mean([np.nanmax(matrix[:last, j]) - matrix[last, j] for j in earlier]))
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
