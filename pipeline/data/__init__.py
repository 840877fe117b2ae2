"""Data sets behind one interface, the class-incremental split, and loaders."""

from .base import DataSource, DatasetError, available_datasets, load_dataset, register_dataset
from .loaders import RelabeledSubset, make_loader
from .split import Split, make_split

# Importing registers the built-in data sets.
from . import cifar100, cub, domainnet, image_folder, imagenet_a, imagenet_r, packaged  # noqa: E402,F401  isort: skip

__all__ = [
    "DataSource",
    "DatasetError",
    "RelabeledSubset",
    "Split",
    "available_datasets",
    "load_dataset",
    "make_loader",
    "make_split",
    "register_dataset",
]
