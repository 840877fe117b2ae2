"""DataLoaders over a task's samples, with labels mapped to the run's class order."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["RelabeledSubset", "make_loader"]


class RelabeledSubset(Dataset):
    """``dataset[indices[i]]`` with its label replaced by ``label_map[label]``."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], label_map: dict[int, int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.label_map = label_map

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.dataset[self.indices[i]]
        return image, self.label_map[int(label)]


def make_loader(
    dataset: Dataset,
    indices: Sequence[int],
    label_map: dict[int, int],
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader whose order is a pure function of ``generator`` (when shuffled).

    The PIL path's loader. Its workers are started per epoch: each epoch seeds
    them from ``generator``, which the epoch checkpoints save, so a resumed run
    draws the same transforms; persistent workers would carry their random
    state across epochs, out of the checkpoint's reach. The device path
    (:mod:`pipeline.data.device_loader`) seeds its crops per batch instead and
    keeps its workers.
    """
    subset = RelabeledSubset(dataset, indices, label_map)
    return DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        drop_last=False,
    )
