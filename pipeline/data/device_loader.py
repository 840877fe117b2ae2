"""Batches for ``data.pipeline: device``: decoded once, cropped on the host, resized on the compute device.

Per training batch, a DataLoader worker draws each image's crop box and flip
(:func:`pipeline.data.batch_transforms.sample_crops`, seeded per batch) and
copies only the box's pixels out of the memory-mapped cache
(:mod:`pipeline.data.decoded`) into one flat uint8 tensor; the main process
moves it to the device (pinned, ``non_blocking``) and resizes, flips and
normalises there. Test-time batches are slices of the cached PIL resize and
centre crop. The workers persist across the epochs of a stage.

Randomness: the sampler draws the epoch's permutation and one epoch seed from
the stage's shuffle generator (the global generator for an unshuffled training
pass), in the main process; batch ``b`` crops from
``derive_seed(epoch_seed, b)``. The crops are thus a function of the
generator's state alone, not of worker count or timing, and a run resumed from
a checkpoint of that state continues bit-identically.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .base import ImageSpec
from .batch_transforms import derive_seed, resized_crops, sample_crops, to_float
from .decoded import DecodedImages, decoded_eval, decoded_train

__all__ = ["EpochBatchSampler", "DeviceBatches", "device_batches"]

_SEED_HIGH = (1 << 63) - 1


class EpochBatchSampler(Sampler):
    """Yields ``(positions, batch_seed)`` per batch: a permutation and seed drawn per epoch from ``generator``."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None, seeded: bool) -> None:
        self.n, self.batch_size, self.shuffle, self.generator, self.seeded = n, batch_size, shuffle, generator, seeded

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[list[int], int]]:
        order = torch.randperm(self.n, generator=self.generator).tolist() if self.shuffle else list(range(self.n))
        seed = int(torch.randint(0, _SEED_HIGH, (1,), generator=self.generator).item()) if self.seeded else 0
        for b in range(len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size], derive_seed(seed, b)


class _TrainCrops(Dataset):
    """One training batch per item: crop boxes' pixels (flat uint8), ``(B, 3)`` height/width/flip, labels."""

    def __init__(self, decoded: DecodedImages, indices: np.ndarray, labels: np.ndarray, scale: tuple[float, float]) -> None:
        self.decoded, self.indices, self.labels, self.scale = decoded, indices, labels, scale

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: tuple[list[int], int]) -> tuple[Tensor, Tensor, Tensor]:
        positions, seed = item
        rows = self.indices[positions]
        boxes = sample_crops([self.decoded.original_size(int(i)) for i in rows], seed, self.scale)
        crops = [self.decoded.crop(int(i), *box[:4]) for i, box in zip(rows, boxes)]
        meta = torch.tensor([(c.shape[0], c.shape[1], box[4]) for c, box in zip(crops, boxes)], dtype=torch.int64)
        pixels = torch.from_numpy(np.concatenate([c.reshape(-1) for c in crops]))
        return pixels, meta, torch.from_numpy(self.labels[positions])


class _EvalImages(Dataset):
    """One test-time batch per item: ``(B, S, S, C)`` uint8 and labels."""

    def __init__(self, images: np.ndarray, indices: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.indices, self.labels = images, indices, labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: tuple[list[int], int]) -> tuple[Tensor, Tensor]:
        positions, _ = item
        return torch.from_numpy(np.ascontiguousarray(self.images[self.indices[positions]])), torch.from_numpy(self.labels[positions])


class DeviceBatches:
    """Re-iterable ``(images, labels)`` batches on ``device``, transformed there; see the module docstring."""

    def __init__(self, loader: DataLoader, device: torch.device, spec: ImageSpec, train: bool) -> None:
        self.loader, self.device, self.spec, self.train = loader, device, spec, train

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for batch in self.loader:
            labels = batch[-1].to(self.device, non_blocking=True)
            pixels = batch[0].to(self.device, non_blocking=True)
            if self.train:
                meta = batch[1].tolist()  # host tensor: no device read
                channels = pixels.numel() // sum(h * w for h, w, _ in meta)
                parts = pixels.split([h * w * channels for h, w, _ in meta])
                crops = [p.view(h, w, channels).permute(2, 0, 1) for p, (h, w, _) in zip(parts, meta)]
                images = resized_crops(crops, [bool(f) for _, _, f in meta], self.spec.image_size)
            else:
                images = pixels.permute(0, 3, 1, 2)
            yield to_float(images, self.spec.normalization), labels


@functools.lru_cache(maxsize=8)
def _train_cache(pool: Any, cache_dir: str | None, max_side: int | None) -> DecodedImages:
    return decoded_train(pool, cache_dir, max_side)


@functools.lru_cache(maxsize=8)
def _eval_cache(pool: Any, cache_dir: str | None, image_size: int, resize_ratio: float, interpolation: str) -> np.ndarray:
    return decoded_eval(pool, cache_dir, image_size, resize_ratio, interpolation)


def device_batches(
    pool: Any,
    spec: ImageSpec,
    indices: Sequence[int],
    label_map: dict[int, int],
    batch_size: int,
    *,
    train: bool,
    device: torch.device,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    cache_dir: str | None = None,
    max_side: int | None = None,
) -> DeviceBatches:
    """Batches of ``pool[indices]`` with labels mapped by ``label_map``, transformed on ``device``.

    Args:
        pool: an image pool (``mode``, ``load(i)``, ``targets``, and ``files`` or ``images``).
        spec: output size, normalisation and test-time resize ratio.
        train: random resized crops and flips (``True``) or the test-time transform.
        generator: shuffles (and seeds the crops) when given; an unshuffled
            training pass seeds its crops from the global generator.
        num_workers: DataLoader workers, persistent across epochs.
        cache_dir, max_side: where the decoded cache lives and its resolution cap.
    """
    rows = np.asarray(indices, dtype=np.int64)
    labels = np.asarray([label_map[int(t)] for t in np.asarray(pool.targets)[rows]], dtype=np.int64)
    if train:
        dataset: Dataset = _TrainCrops(_train_cache(pool, cache_dir, max_side), rows, labels, spec.crop_scale)
    else:
        dataset = _EvalImages(_eval_cache(pool, cache_dir, spec.image_size, spec.resize_ratio, spec.interpolation), rows, labels)
    sampler = EpochBatchSampler(len(rows), batch_size, shuffle=generator is not None, generator=generator, seeded=train)
    loader = DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        generator=torch.Generator(),  # the workers' base seed: unused, and kept off the shared generators
    )
    return DeviceBatches(loader, device, spec, train)
