"""The data-split stage's computation: class order, tasks and per-task index lists.

Every random choice comes from a generator derived from the run's seed, so the
split is a pure function of (data set, config, seed) and is saved in the run
directory for the later stages and for inspection. The one exception is the
held-out test split under ``data.split_seed``: it is drawn from that seed alone,
as InfLoRA's official code draws it for ImageNet-R (``utils/data.py``,
``iIMAGENET_R.download_data``: ``torch.manual_seed(seed)`` then
``random_split(ImageFolder(root), [int(0.8 * N), N - int(0.8 * N)])`` over the
whole data set, not per class; the first run moves the files into ``train/`` and
``test/`` folders and every later seed reuses them), so that every run seed
shares one split. ``torch.randperm`` with a fresh generator seeded the same way
gives the same permutation as that call on the CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .base import DataSource, DatasetError

__all__ = ["Split", "held_out_whole_pool", "make_split", "split_protocol"]


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
        protocol: how the split was made, for ``split.json`` and MLflow: the test
            split's origin, the split seed, the split files and their SHA-256.
    """

    class_order: list[int]
    task_classes: list[list[int]]
    train: list[list[int]]
    val: list[list[int]]
    test: list[list[int]]
    test_from_train: bool = False
    protocol: dict[str, Any] = field(default_factory=dict)

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
            protocol=dict(data.get("protocol", {})),
        )


def _class_order(num_classes: int, order: str | list[int], rng: np.random.Generator) -> list[int]:
    if order == "fixed":
        return list(range(num_classes))
    if order == "seeded":
        return [int(c) for c in rng.permutation(num_classes)]
    if sorted(order) != list(range(num_classes)):
        raise DatasetError(f"data.class_order must list each of the {num_classes} classes exactly once")
    return [int(c) for c in order]


def held_out_whole_pool(num_samples: int, test_fraction: float, split_seed: int) -> np.ndarray:
    """Indices of the test part of one draw over the whole pool (InfLoRA's ``random_split``).

    The first ``int((1 - test_fraction) * N)`` entries of ``randperm(N)`` seeded by
    ``split_seed`` train, the rest test, as ``torch.utils.data.random_split`` with
    lengths ``[int(0.8 * N), N - int(0.8 * N)]`` after ``torch.manual_seed(split_seed)``.

    Returns:
        Sorted int64 indices of the test samples.
    """
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(split_seed))
    n_train = int((1.0 - test_fraction) * num_samples)
    return np.sort(perm[n_train:].numpy().astype(np.int64))


def split_protocol(source: DataSource, test_fraction: float, split_seed: int | None) -> dict[str, Any]:
    """What defines the train/test split of a run (recorded in ``split.json``)."""
    protocol: dict[str, Any] = {k: v for k, v in source.info.items() if k.startswith("split_file")}
    if source.has_test_split:
        protocol["test_split"] = source.info.get("split") or "the data set's own test pool"
    elif split_seed is not None:
        protocol["test_split"] = f"one {test_fraction:g} draw over the whole pool from split_seed (InfLoRA official)"
        protocol["split_seed"] = split_seed
        protocol["test_fraction"] = test_fraction
    else:
        protocol["test_split"] = f"{test_fraction:g} of each class held out, seeded by the run seed"
        protocol["test_fraction"] = test_fraction
    return protocol


def make_split(
    source: DataSource,
    num_tasks: int,
    seed: int,
    class_order: str | list[int] = "seeded",
    val_fraction: float = 0.1,
    max_train_per_class: int | None = None,
    test_fraction: float = 0.2,
    split_seed: int | None = None,
) -> Split:
    """Split ``source`` into ``num_tasks`` class-incremental tasks.

    Args:
        split_seed: when the source has no test pool, hold out the test split
            by :func:`held_out_whole_pool` from this seed instead of per class
            from the run's ``seed``; ignored when the source has a test pool.

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
    whole_pool_test = None
    if test_from_train and split_seed is not None:
        whole_pool_test = np.zeros(len(source.train_targets), dtype=bool)
        whole_pool_test[held_out_whole_pool(len(source.train_targets), test_fraction, split_seed)] = True
    task_classes = [[int(c) for c in chunk] for chunk in np.array_split(np.array(order), num_tasks)]
    train, val, test = [], [], []
    for t, classes in enumerate(task_classes):
        tr, va, te = [], [], []
        for c in classes:
            idx = np.flatnonzero(source.train_targets == c)
            if whole_pool_test is not None:
                te.extend(idx[whole_pool_test[idx]].tolist())
                idx = idx[~whole_pool_test[idx]]
            elif test_from_train:
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
    return Split(order, task_classes, train, val, test, test_from_train, split_protocol(source, test_fraction, split_seed))
