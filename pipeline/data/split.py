"""The data-split stage's computation: class order, tasks and per-task index lists.

Every random choice comes from a generator derived from the run's seed, so the
split is a pure function of (data set, config, seed) and is saved in the run
directory for the later stages and for inspection.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .base import DataSource, DatasetError

__all__ = ["Split", "make_split"]


@dataclass(frozen=True)
class Split:
    """Class order and the samples of every task.

    Attributes:
        class_order: original labels in learning order; a class's *global label*
            is its position here, so task t owns a contiguous range of labels.
        task_classes: original labels of each task.
        train, val, test: per task, indices into the data set's train/test pools
            (``val`` is carved from the training pool; so is ``test`` when the data
            set has no test split, see ``test_from_train``).
        test_from_train: ``test`` indexes the training pool (held out by seed).
    """

    class_order: list[int]
    task_classes: list[list[int]]
    train: list[list[int]]
    val: list[list[int]]
    test: list[list[int]]
    test_from_train: bool = False

    @property
    def num_tasks(self) -> int:
        return len(self.task_classes)

    def label_map(self) -> dict[int, int]:
        """Original label → global label (position in the class order)."""
        return {c: i for i, c in enumerate(self.class_order)}

    def class_offset(self, task: int) -> int:
        return sum(len(c) for c in self.task_classes[:task])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Split":
        return cls(
            **{k: data[k] for k in ("class_order", "task_classes", "train", "val", "test")},
            test_from_train=bool(data.get("test_from_train", False)),
        )


def _class_order(num_classes: int, order: str | list[int], rng: np.random.Generator) -> list[int]:
    if order == "fixed":
        return list(range(num_classes))
    if order == "seeded":
        return [int(c) for c in rng.permutation(num_classes)]
    if sorted(order) != list(range(num_classes)):
        raise DatasetError(f"data.class_order must list each of the {num_classes} classes exactly once")
    return [int(c) for c in order]


def make_split(
    source: DataSource,
    num_tasks: int,
    seed: int,
    class_order: str | list[int] = "seeded",
    val_fraction: float = 0.1,
    max_train_per_class: int | None = None,
    test_fraction: float = 0.2,
) -> Split:
    """Split ``source`` into ``num_tasks`` class-incremental tasks.

    Raises:
        DatasetError: more tasks than classes, or a task without samples.
    """
    n = source.num_classes
    if num_tasks > n:
        raise DatasetError(f"data.num_tasks={num_tasks} is more than the {n} classes of {source.name!r}")
    order_rng = np.random.default_rng([seed, 0])
    sample_rng = np.random.default_rng([seed, 1])
    test_rng = np.random.default_rng([seed, 2])
    test_from_train = not source.has_test_split
    order = _class_order(n, class_order, order_rng)
    task_classes = [[int(c) for c in chunk] for chunk in np.array_split(np.array(order), num_tasks)]
    train, val, test = [], [], []
    for t, classes in enumerate(task_classes):
        tr, va, te = [], [], []
        for c in classes:
            idx = np.flatnonzero(source.train_targets == c)
            if test_from_train:
                test_rng.shuffle(idx)
                n_test = max(1, int(round(test_fraction * len(idx)))) if len(idx) > 1 else 0
                te.extend(idx[:n_test].tolist())
                idx = np.sort(idx[n_test:])
            else:
                te.extend(np.flatnonzero(source.test_targets == c).tolist())
            sample_rng.shuffle(idx)
            n_val = int(round(val_fraction * len(idx)))
            if val_fraction > 0 and len(idx) > 1:
                n_val = max(n_val, 1)
            va.extend(idx[:n_val].tolist())
            rest = idx[n_val:]
            if max_train_per_class is not None:
                rest = rest[:max_train_per_class]
            tr.extend(rest.tolist())
        if not tr:
            raise DatasetError(f"task {t} (classes {classes}) has no training samples")
        if not te:
            raise DatasetError(f"task {t} (classes {classes}) has no test samples")
        train.append(sorted(tr))
        val.append(sorted(va))
        test.append(sorted(te))
    return Split(order, task_classes, train, val, test, test_from_train)
