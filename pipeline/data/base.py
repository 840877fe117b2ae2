"""Data-set interface and registry.

A data set is loaded into a :class:`DataSource`: a training pool and a test
pool, each a map-style :class:`torch.utils.data.Dataset` of ``(image, label)``
with the labels also given as an array, so that splits are computed without
touching an image. Loaders register by name with :func:`register_dataset`.

The names are declared here (:data:`DATASETS`), each with the module that loads
it, so that a config's ``data.name`` is checked without importing any loader
(they import torch); :func:`load_dataset` imports the loader's module on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a config names a data set without importing torch
    import numpy as np
    from torch.utils.data import Dataset

    from .config import DataConfig

__all__ = [
    "DATASETS",
    "SPLIT_FILE_DATASETS",
    "DataSource",
    "ImageSpec",
    "DatasetError",
    "Normalization",
    "register_dataset",
    "load_dataset",
    "available_datasets",
]

DATASETS = {
    "digits": "pipeline.data.packaged",
    "mnist": "pipeline.data.packaged",
    "cifar100": "pipeline.data.cifar100",
    "cub": "pipeline.data.cub",
    "domainnet": "pipeline.data.domainnet",
    "image_folder": "pipeline.data.image_folder",
    "imagenet_a": "pipeline.data.imagenet_a",
    "imagenet_r": "pipeline.data.imagenet_r",
}
"""Every data set by name, with the module whose :func:`register_dataset` loads it (imported on first use).
A loader registered elsewhere adds itself."""

SPLIT_FILE_DATASETS = frozenset({"imagenet_r", "imagenet_a", "cub", "domainnet", "image_folder"})
"""Data sets read from image files, whose pools a split file may replace (:mod:`pipeline.data.split_file`)."""


class DatasetError(ValueError):
    """A data set cannot be loaded: missing path, wrong layout, empty class."""


@dataclass(frozen=True)
class ImageSpec:
    """How an image data set's pools are transformed, for the device path (:mod:`pipeline.data.device_loader`).

    Attributes:
        image_size: side of the square model input.
        normalization: per-channel ``(mean, std)`` fitted to the images' channels, or ``None``.
        resize_ratio: test-time short side before the centre crop, as a multiple of ``image_size``.
        crop_scale: the training crop's share of the image (``data.options.crop_scale``).
        interpolation: of the test-time resize (``data.options.test_interpolation``).
    """

    image_size: int
    normalization: "Normalization"
    resize_ratio: float
    crop_scale: tuple[float, float] = (0.08, 1.0)
    interpolation: str = "bilinear"


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
        images: the transforms' settings of an image data set whose pools hold
            ``mode`` and ``load(i)`` (PIL images), so that the device path can
            decode them once and transform batches on the device; ``None`` for
            data sets of ready tensors.
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
    images: ImageSpec | None = None

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
    """Decorator: ``fn`` loads data set ``name`` (a name not in :data:`DATASETS` is added, with ``fn``'s module)."""

    def deco(fn: Loader) -> Loader:
        if name in _REGISTRY:
            raise ValueError(f"data set {name!r} is registered twice")
        _REGISTRY[name] = fn
        DATASETS.setdefault(name, fn.__module__)
        return fn

    return deco


def available_datasets() -> list[str]:
    """The declared data sets' names (no loader imported)."""
    return sorted(DATASETS)


def load_dataset(cfg: "DataConfig", normalization: Normalization = None) -> DataSource:
    """Load the data set named by ``cfg.name`` and check it is usable.

    Args:
        cfg: the data section of the run config; with ``data.split_file`` the
            pools are the listed images (:mod:`pipeline.data.split_file`).
        normalization: ``(mean, std)`` the images are normalised with (image
            data sets); see :func:`pipeline.data.transforms.resolve_normalization`.
    """
    if cfg.name not in DATASETS:
        raise DatasetError(f"unknown data set {cfg.name!r}; known: {available_datasets()}")
    importlib.import_module(DATASETS[cfg.name])  # registers its loader
    if getattr(cfg, "split_file", None) is not None:  # a declared split replaces the data set's own pools
        from .split_file import load_split_files

        source = load_split_files(cfg, normalization)
    else:
        source = _REGISTRY[cfg.name](cfg, normalization)
    if len(source.train_targets) == 0:
        raise DatasetError(f"data set {cfg.name!r} has no training samples")
    return source
