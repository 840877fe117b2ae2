"""Declared train/test splits: the image lists other papers publish, read as they are.

Results on ImageNet-R are only comparable when the split is the same, and four
incompatible ones are in use. ``data.split_file`` (training list) and
``data.split_file_test`` (test list) read the two published formats:

* the YAML lists of the CODA-Prompt lineage (``imagenet-r_train.yaml`` /
  ``imagenet-r_test.yaml`` in CODA-Prompt, Mammoth, and ``utils/splits/`` of the
  InfLoRA repository)::

      data:
      - data/imagenet-r/n02128757/sculpture_4.jpg
      targets:
      - 129

* plain text, one ``<path> <label>`` per line (the DomainNet lists, VPT-NSP's
  ``imagenet_r_{train,val}.txt``).

Listed paths resolve against ``data.root`` after ``data.split_prefix`` is
stripped from their start. Every listed file must exist: a missing one stops the
run with the first missing path and how many are missing. The SHA-256 of each
list goes into the source's ``info`` and from there into ``split.json``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from .base import SPLIT_FILE_DATASETS, DatasetError, DataSource, Normalization
from .image_folder import image_source, require_root
from .transforms import check_options

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = [
    "SPLIT_FILE_DATASETS",
    "read_split_list",
    "resolve_listed_paths",
    "check_listed_files",
    "file_sha256",
    "load_split_files",
]

_logger = logging.getLogger(__name__)

YAML_SUFFIXES = (".yaml", ".yml")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (the split's identity in ``split.json`` and MLflow)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_yaml_list(path: Path) -> tuple[list[str], list[int]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads 24k entries in a fraction of a second
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except yaml.YAMLError as exc:
        raise DatasetError(f"split file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or "data" not in data or "targets" not in data:
        raise DatasetError(f"split file {path} must hold a mapping with the lists 'data' (image paths) and 'targets' (labels)")
    paths, targets = data["data"], data["targets"]
    if not isinstance(paths, list) or not isinstance(targets, list):
        raise DatasetError(f"split file {path}: 'data' and 'targets' must be lists")
    if len(paths) != len(targets):
        raise DatasetError(f"split file {path}: {len(paths)} paths in 'data' but {len(targets)} labels in 'targets'")
    for i, (p, t) in enumerate(zip(paths, targets)):
        if not isinstance(p, str) or isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise DatasetError(f"split file {path}: entry {i} must be a path and a label >= 0, got {p!r}, {t!r}")
    return paths, targets


def path_label_lines(path: Path) -> Iterator[tuple[int, str, int]]:
    """``(line number, path, label)`` of each non-empty ``<path> <label>`` line (DomainNet's lists, VPT-NSP's).

    Raises:
        DatasetError: a line that is not a path followed by a non-negative integer label.
    """
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].isdigit():
                raise DatasetError(f"{path}:{number}: expected '<relative path> <label>', got {line!r}")
            yield number, parts[0], int(parts[1])


def _read_text_list(path: Path) -> tuple[list[str], list[int]]:
    rows = [(rel, label) for _, rel, label in path_label_lines(path)]
    return [r for r, _ in rows], [y for _, y in rows]


def read_split_list(path: str | os.PathLike[str]) -> tuple[list[str], list[int]]:
    """The listed paths (as written) and labels of a split file.

    ``.yaml``/``.yml`` files are read as CODA-Prompt lists, anything else as
    ``<path> <label>`` lines.

    Raises:
        DatasetError: missing, malformed or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split file not found: {path}")
    paths, targets = (_read_yaml_list if path.suffix.lower() in YAML_SUFFIXES else _read_text_list)(path)
    if not paths:
        raise DatasetError(f"split file {path} lists no image")
    return paths, targets


def resolve_listed_paths(paths: list[str], root: Path, prefix: str | None, list_path: Path) -> list[str]:
    """Absolute file paths: ``prefix`` stripped from each listed path, the rest joined to ``root``.

    Raises:
        DatasetError: a path that does not start with the declared ``prefix``.
    """
    base = str(root)
    out: list[str] = []
    for p in paths:
        p = p.replace("\\", "/")
        if prefix:
            if not p.startswith(prefix):
                raise DatasetError(f"split file {list_path} lists {p!r}, which does not start with data.split_prefix {prefix!r}")
            p = p[len(prefix):]
        out.append(p if os.path.isabs(p) else os.path.join(base, p.lstrip("/")))
    return out


def check_listed_files(files: list[str], list_path: Path) -> None:
    """Every listed file exists.

    Raises:
        DatasetError: naming the first missing file and the number missing.
    """
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise DatasetError(
            f"split file {list_path}: {len(missing)} of {len(files)} listed images are missing, the first {missing[0]} "
            "(check data.root and data.split_prefix)"
        )


def _class_names(files: list[str], targets: np.ndarray, num_classes: int) -> list[str]:
    """Each label's name: the parent folder of its first listed image (the wnid on ImageNet-R)."""
    names: dict[int, str] = {}
    for f, t in zip(files, targets.tolist()):
        names.setdefault(int(t), os.path.basename(os.path.dirname(f)) or str(t))
    return [names.get(k, str(k)) for k in range(num_classes)]


def _read(path: Path, root: Path, prefix: str | None) -> tuple[list[str], np.ndarray]:
    paths, targets = read_split_list(path)
    files = resolve_listed_paths(paths, root, prefix, path)
    check_listed_files(files, path)
    return files, np.asarray(targets, dtype=np.int64)


def load_split_files(cfg: DataConfig, normalization: Normalization = None) -> DataSource:
    """The pools declared by ``data.split_file`` (and ``data.split_file_test``), under ``data.root``.

    Raises:
        DatasetError: an unreadable list, a missing image, labels that leave a
            class without training images, or test labels the training list lacks.
    """
    assert cfg.split_file is not None  # the caller dispatches on it
    check_options(cfg.name, cfg.options)
    root = require_root(cfg, "the images the split file lists (after data.split_prefix is stripped)")
    train_path = Path(cfg.split_file)
    train_files, train_targets = _read(train_path, root, cfg.split_prefix)
    num_classes = int(train_targets.max()) + 1
    absent = sorted(set(range(num_classes)) - set(train_targets.tolist()))
    if absent:
        raise DatasetError(f"split file {train_path} has no image of label(s) {absent[:10]} (labels must be 0..{num_classes - 1})")
    info = {
        "root": str(root),
        "split": "split file",
        "split_file": str(train_path),
        "split_file_sha256": file_sha256(train_path),
    }
    test: tuple[list[str], np.ndarray] | None = None
    if cfg.split_file_test is not None:
        test_path = Path(cfg.split_file_test)
        test_files, test_targets = _read(test_path, root, cfg.split_prefix)
        extra = sorted(set(test_targets.tolist()) - set(range(num_classes)))
        if extra:
            raise DatasetError(f"split file {test_path} has label(s) {extra[:10]} that {train_path} never lists")
        test = (test_files, test_targets)
        info["split_file_test"] = str(test_path)
        info["split_file_test_sha256"] = file_sha256(test_path)
    _logger.info(
        "%s from split file %s: %d classes, %d train / %s test images",
        cfg.name, train_path, num_classes, len(train_files), len(test[0]) if test else "held-out",
    )
    return image_source(cfg, normalization, (train_files, train_targets), test, _class_names(train_files, train_targets, num_classes), info=info)
