"""Data sets behind one interface, the class-incremental split, and loaders.

The names below load on first use (:mod:`model.lazy`): a config's ``data`` section
(:mod:`pipeline.data.config`) is validated without importing torch; each data set's
loader module is imported when it is first loaded (:data:`pipeline.data.base.DATASETS`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from model.lazy import lazy_exports

if TYPE_CHECKING:
    from .base import DataSource, DatasetError, available_datasets, load_dataset, register_dataset
    from .loaders import RelabeledSubset, make_loader
    from .split import Split, make_split

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".base": ("DataSource", "DatasetError", "available_datasets", "load_dataset", "register_dataset"),
    ".loaders": ("RelabeledSubset", "make_loader"),
    ".split": ("Split", "make_split"),
})  # fmt: skip
