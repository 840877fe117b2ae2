"""DomainNet (Peng et al., 2019): 345 classes in six domains, class-incremental.

Expected under ``data.root`` (the images and the official file lists from
http://ai.bu.edu/M3SDA/)::

    root/clipart_train.txt   root/clipart_test.txt   root/clipart/<class>/<image>.jpg
    root/infograph_train.txt ...                     root/infograph/...
    ... (painting, quickdraw, real, sketch)

Each list line is ``<path relative to root> <label>``, e.g.
``clipart/aircraft_carrier/clipart_001_000001.jpg 0``. The training pool is the
concatenation of the ``*_train.txt`` lists of the chosen domains, the test pool
that of their ``*_test.txt`` lists; tasks split the 345 classes (the paper:
5 tasks of 69 classes), each task holding its classes' images from every domain.
Class names are the class folder of the paths.

Options:
    domains: the domains to use (a list, default all six), in any order; they are
        always read in the canonical order below.
    channels: 3 (RGB) or 1 (grayscale).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import DatasetError, DataSource, Normalization, register_dataset
from .image_folder import image_source, require_root
from .split_file import path_label_lines
from .transforms import check_options

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = ["DOMAINS", "DOMAINNET_CLASSES", "read_file_list", "load_domainnet"]

_logger = logging.getLogger(__name__)

DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
DOMAINNET_CLASSES = 345

LAYOUT = (
    "root/<domain>_train.txt and root/<domain>_test.txt (the official file lists, lines like "
    "'clipart/aircraft_carrier/clipart_001_000001.jpg 0') and the images they list under root "
    f"(root/<domain>/<class>/<image>.jpg), for the domains {list(DOMAINS)}"
)


def _domains(options: dict[str, Any]) -> list[str]:
    chosen = options.get("domains", list(DOMAINS))
    if isinstance(chosen, str):
        chosen = [chosen]
    if not isinstance(chosen, (list, tuple)) or not chosen:
        raise DatasetError(f"data.options.domains must be a non-empty list of domains from {list(DOMAINS)}, got {chosen!r}")
    unknown = [d for d in chosen if d not in DOMAINS]
    if unknown:
        raise DatasetError(f"data.options.domains: unknown domain(s) {unknown}; known: {list(DOMAINS)}")
    if len(set(chosen)) != len(chosen):
        raise DatasetError(f"data.options.domains lists a domain twice: {list(chosen)}")
    return [d for d in DOMAINS if d in chosen]


def read_file_list(path: Path, root: Path) -> tuple[list[str], list[int], dict[int, str]]:
    """Parse one official list file.

    Args:
        path: ``<domain>_{train,test}.txt``.
        root: the folder the listed paths are relative to.

    Returns:
        ``(files, labels, names)``: absolute paths, int labels, and the class
        name (the path's parent folder) of every label seen.

    Raises:
        DatasetError: a malformed line, or one label under two class folders.
    """
    files: list[str] = []
    labels: list[int] = []
    names: dict[int, str] = {}
    base = str(root)  # plain strings: the full lists have 586k lines
    for number, rel, label in path_label_lines(path):
        rel_parts = rel.split("/")
        name = rel_parts[-2] if len(rel_parts) >= 2 else str(label)
        if names.setdefault(label, name) != name:
            raise DatasetError(f"{path}:{number}: label {label} is class {names[label]!r} earlier but {name!r} here")
        files.append(os.path.join(base, rel))
        labels.append(label)
    return files, labels, names


def _read_lists(root: Path, domains: Sequence[str], part: str) -> tuple[list[str], np.ndarray, dict[int, str]]:
    files: list[str] = []
    labels: list[int] = []
    names: dict[int, str] = {}
    for domain in domains:
        path = root / f"{domain}_{part}.txt"
        if not path.is_file():
            raise DatasetError(f"DomainNet file list {path} not found; expected {LAYOUT}")
        f, y, n = read_file_list(path, root)
        if not f:
            raise DatasetError(f"DomainNet file list {path} is empty")
        if not Path(f[0]).is_file():
            raise DatasetError(
                f"{path} lists {f[0]}, which does not exist: unpack the {domain} images under {root}; expected {LAYOUT}"
            )
        for label, name in n.items():
            if names.setdefault(label, name) != name:
                raise DatasetError(f"{path}: label {label} is class {name!r}, but {names[label]!r} in an earlier list")
        files.extend(f)
        labels.extend(y)
    return files, np.asarray(labels, dtype=np.int64), names


@register_dataset("domainnet")
def load_domainnet(cfg: DataConfig, normalization: Normalization = None) -> DataSource:
    """DomainNet from the official file lists in ``data.root`` (``data.options.domains`` selects domains)."""
    check_options(cfg.name, cfg.options, allowed=("domains",))
    domains = _domains(cfg.options)
    root = require_root(cfg, LAYOUT)
    train_files, train_targets, names = _read_lists(root, domains, "train")
    test_files, test_targets, test_names = _read_lists(root, domains, "test")
    num_classes = int(train_targets.max()) + 1
    absent = sorted(set(range(num_classes)) - set(names))
    if absent:
        raise DatasetError(f"DomainNet training lists of {domains} in {root} have no image of label(s) {absent[:10]}")
    for label, name in test_names.items():
        if names.get(label) != name:
            raise DatasetError(
                f"DomainNet test lists in {root}: label {label} is {name!r}, but {names.get(label)!r} in the training lists"
            )
    if num_classes != DOMAINNET_CLASSES:
        _logger.warning("DomainNet in %s has %d classes, not %d", root, num_classes, DOMAINNET_CLASSES)
    _logger.info(
        "DomainNet %s (%s): %d classes, %d train / %d test images",
        root, ",".join(domains), num_classes, len(train_files), len(test_files),
    )
    class_names = [names[k] for k in range(num_classes)]
    return image_source(
        cfg, normalization, (train_files, train_targets), (test_files, test_targets), class_names,
        info={"root": str(root), "domains": ",".join(domains)},
    )
