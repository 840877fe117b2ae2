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

from typing import TYPE_CHECKING

from .base import DataSource, Normalization, register_dataset
from .image_folder import load_class_folder_set

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = ["IMAGENET_R_CLASSES", "load_imagenet_r"]

IMAGENET_R_CLASSES = 200

LAYOUT = (
    "root/imagenet-r/<wnid>/<image>.jpg with the 200 class folders of imagenet-r.tar (root may also be the "
    "imagenet-r folder itself), or a pre-split root/imagenet-r/{train,test}/<wnid>/<image>.jpg"
)


@register_dataset("imagenet_r")
def load_imagenet_r(cfg: DataConfig, normalization: Normalization = None) -> DataSource:
    """ImageNet-R from ``data.root``; without a pre-split copy the test split is held out by the split stage."""
    return load_class_folder_set(cfg, normalization, "imagenet-r", LAYOUT, IMAGENET_R_CLASSES, "ImageNet-R")
