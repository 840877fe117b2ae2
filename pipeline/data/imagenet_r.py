"""ImageNet-R (Hendrycks et al., 2021): 30,000 renditions of 200 ImageNet classes.

Expected under ``data.root`` (the folder ``imagenet-r.tar`` unpacks to)::

    root/imagenet-r/<wnid>/*.jpg      (or root/<wnid>/*.jpg: root is the imagenet-r folder)

ImageNet-R has no official test split: the source has ``test=None`` and the
split stage holds out ``data.test_fraction`` (0.2 in the paper's protocol) of
every class, seeded by the run's seed, and writes it to the run's ``split.json``.

A pre-split copy, as the LAE / reference-code preparation makes it, is used as is::

    root/imagenet-r/train/<wnid>/*.jpg
    root/imagenet-r/test/<wnid>/*.jpg

``data.options.split_folders: true`` requires that copy (SD-LoRA's protocol reads
``./data/imagenet-r/{train,test}/``, ``utils/data.py`` ``iImageNetR``) and refuses to
hold out a split of its own.

Labels are the sorted ``wnid`` folder names; images are read lazily with PIL,
converted to RGB (or grayscale with ``data.options.channels: 1``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .base import DatasetError, DataSource, Normalization, register_dataset
from .image_folder import image_source, require_root, scan_class_folders
from .transforms import check_options

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = ["IMAGENET_R_CLASSES", "load_imagenet_r"]

_logger = logging.getLogger(__name__)

IMAGENET_R_CLASSES = 200

LAYOUT = (
    "root/imagenet-r/<wnid>/<image>.jpg with the 200 class folders of imagenet-r.tar (root may also be the "
    "imagenet-r folder itself), or a pre-split root/imagenet-r/{train,test}/<wnid>/<image>.jpg"
)


def _dataset_folder(root: Path) -> Path:
    inner = root / "imagenet-r"
    return inner if inner.is_dir() else root


@register_dataset("imagenet_r")
def load_imagenet_r(cfg: DataConfig, normalization: Normalization = None) -> DataSource:
    """ImageNet-R from ``data.root``; without a pre-split copy the test split is held out per run seed."""
    check_options(cfg.name, cfg.options, ("split_folders",))
    folder = _dataset_folder(require_root(cfg, LAYOUT))
    presplit = (folder / "train").is_dir() and (folder / "test").is_dir()
    if cfg.options.get("split_folders") and not presplit:
        raise DatasetError(
            f"data.options.split_folders: true needs the pre-split copy {folder / 'train'}/<wnid>/ and {folder / 'test'}/<wnid>/; "
            f"{folder} has no train/ and test/ folders"
        )
    if presplit:
        train_files, train_targets, classes = scan_class_folders(folder / "train", LAYOUT)
        test_files, test_targets, _ = scan_class_folders(folder / "test", LAYOUT, classes)
        test = (test_files, test_targets)
        split = "pre-split train/test folders"
    else:
        train_files, train_targets, classes = scan_class_folders(folder, LAYOUT)
        test = None
        split = "test held out per run seed (data.test_fraction)"
    if len(classes) != IMAGENET_R_CLASSES:
        _logger.warning("ImageNet-R in %s has %d class folders, not %d", folder, len(classes), IMAGENET_R_CLASSES)
    _logger.info("ImageNet-R %s: %d classes, %d images; %s", folder, len(classes), len(train_files), split)
    info = {"root": str(folder), "split": split}
    return image_source(cfg, normalization, (train_files, train_targets), test, classes, info=info)
