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

from .image_folder import register_class_folder_set

__all__ = ["IMAGENET_R_CLASSES", "load_imagenet_r"]

IMAGENET_R_CLASSES = 200
load_imagenet_r = register_class_folder_set("imagenet_r", "imagenet-r", "imagenet-r.tar", IMAGENET_R_CLASSES, "ImageNet-R")
