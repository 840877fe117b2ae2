"""A run's results, read back from its eval markers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..running.spec import read_result
from ..running.state import RunDir, StageKey
from .metrics import accuracy_matrix, old_new_accuracy, session_accuracy, summarize

__all__ = ["RunResults", "collect_results"]


@dataclass
class RunResults:
    """Accuracy matrices (test and validation) of the sessions evaluated so far."""

    test: pd.DataFrame
    val: pd.DataFrame
    counts: list[int]
    learned_at: list[int]

    @property
    def sessions_done(self) -> int:
        return len(self.test)

    def summary(self, part: str = "test") -> dict[str, float]:
        if not self.has(part):  # e.g. no validation split
            return {}
        matrix = self.test if part == "test" else self.val
        return summarize(matrix.to_numpy(), self.counts, self.learned_at)

    def has(self, part: str) -> bool:
        """Whether ``part`` was evaluated at all (``val`` is empty with ``val_fraction: 0``)."""
        matrix = self.test if part == "test" else self.val
        return not (matrix.empty or matrix.isna().all().all())

    def old_new(self) -> dict[str, list[float]]:
        """Per session, test accuracy on old tasks and on the session's new tasks.

        Test only: the eval records count test samples, the weights of the mean.
        """
        if not self.has("test"):
            return {}
        old, new = old_new_accuracy(self.test.to_numpy(), self.counts, self.learned_at)
        return {"old": old.tolist(), "new": new.tolist()}

    def curves(self, part: str = "test") -> dict[str, list[float]]:
        """Accuracy after each session (empty if ``part`` was not evaluated)."""
        if not self.has(part):
            return {}
        matrix = self.test if part == "test" else self.val
        task_mean, weighted = session_accuracy(matrix.to_numpy(), np.asarray(self.counts, dtype=float))
        return {"task_mean": task_mean.tolist(), "sample_weighted": weighted.tolist()}


def collect_results(run_dir: RunDir, sessions: list[list[int]], upto: int | None = None) -> RunResults:
    """Read the eval markers of consecutive sessions ``0..upto`` (all finished ones when ``None``)."""
    num_tasks = sum(len(s) for s in sessions)
    learned_at = [0] * num_tasks
    for s, tasks in enumerate(sessions):
        for t in tasks:
            learned_at[t] = s
    test_rows, val_rows = [], []
    counts = [0] * num_tasks
    last = len(sessions) - 1 if upto is None else upto
    for s in range(last + 1):
        key = StageKey(s, "eval")
        if not run_dir.is_done(key):
            break
        result = read_result(run_dir, key)
        test_rows.append(result.test_row())
        val_rows.append(result.val_row())
        for task, n in result.counts().items():
            counts[task] = n
    return RunResults(accuracy_matrix(test_rows, num_tasks), accuracy_matrix(val_rows, num_tasks), counts, learned_at)
