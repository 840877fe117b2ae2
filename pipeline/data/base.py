"""Data-set interface and registry.

A data set is loaded into a :class:`DataSource`: a training pool and a test
pool, each a map-style :class:`torch.utils.data.Dataset` of ``(image, label)``
with the labels also given as an array, so that splits are computed without
touching an image. Loaders register by name with :func:`register_dataset`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = ["DataSource", "DatasetError", "Normalization", "register_dataset", "load_dataset", "available_datasets"]


class DatasetError(ValueError):
    """A data set cannot be loaded: missing path, wrong layout, empty class."""


@dataclass
class DataSource:
    """A loaded data set.

    Attributes:
        name: registry name.
        train, test: ``(image, label)`` datasets; images are float tensors ready
            for the backbone (transforms included). ``test`` is ``None`` for data
            sets without an official test split (ImageNet-R): the split stage then
            holds out ``data.test_fraction`` of every class of the training pool,
            seeded by the run's seed, and tests on ``train_eval``.
        train_targets, test_targets: int64 label arrays aligned with the datasets.
        class_names: human-readable name of each label.
        input_shape: ``(channels, height, width)`` of one image.
        train_eval: the training pool with test-time transforms, for passes that
            measure rather than train (covariance, validation); ``train`` if ``None``.
    """

    name: str
    train: Dataset
    test: Dataset | None
    train_targets: np.ndarray
    test_targets: np.ndarray | None
    class_names: list[str]
    input_shape: tuple[int, int, int]
    train_eval: Dataset | None = None
    info: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def measure_pool(self) -> Dataset:
        """The training pool with test-time transforms (validation, held-out test)."""
        return self.train_eval if self.train_eval is not None else self.train

    @property
    def has_test_split(self) -> bool:
        return self.test is not None


Normalization = tuple[tuple[float, ...], tuple[float, ...]] | None
"""``(mean, std)`` per channel for image data sets, or ``None`` for images in [0, 1]."""

Loader = Callable[["DataConfig", Normalization], DataSource]
_REGISTRY: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        if name in _REGISTRY:
            raise ValueError(f"data set {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def available_datasets() -> list[str]:
    return sorted(_REGISTRY)


def load_dataset(cfg: "DataConfig", normalization: Normalization = None) -> DataSource:
    """Load the data set named by ``cfg.name`` and check it is usable.

    Args:
        cfg: the data section of the run config; with ``data.split_file`` the
            pools are the listed images (:mod:`pipeline.data.split_file`).
        normalization: ``(mean, std)`` the images are normalised with (image
            data sets); see :func:`pipeline.data.transforms.resolve_normalization`.
    """
    if cfg.name not in _REGISTRY:
        raise DatasetError(f"unknown data set {cfg.name!r}; known: {available_datasets()}")
    if getattr(cfg, "split_file", None) is not None:  # a declared split replaces the data set's own pools
        from .split_file import load_split_files

        source = load_split_files(cfg, normalization)
    else:
        source = _REGISTRY[cfg.name](cfg, normalization)
    if len(source.train_targets) == 0:
        raise DatasetError(f"data set {cfg.name!r} has no training samples")
    return source
