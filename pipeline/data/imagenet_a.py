"""ImageNet-A (Hendrycks et al., 2021): 7,500 natural adversarial images of 200 ImageNet classes.

Read in either layout a user may have:

* the pre-split copy that InfLoRA's ``utils/data.py`` (``iIMAGENET_A``), RanPAC
  and PILOT read (the RevisitingCIL preparation)::

      root/imagenet-a/train/<wnid>/*.jpg
      root/imagenet-a/test/<wnid>/*.jpg

* the archive ``imagenet-a.tar`` as published, which has no split::

      root/imagenet-a/<wnid>/*.jpg      (root may also be the imagenet-a folder itself)

  The test split is then held out by the split stage, as for ImageNet-R
  (``data.split_seed`` / ``data.test_fraction``), or declared with
  ``data.split_file`` / ``data.split_file_test`` (docs/datasets.md).

Labels are the sorted ``wnid`` folder names.
"""

from __future__ import annotations

from .image_folder import register_class_folder_set

__all__ = ["IMAGENET_A_CLASSES", "load_imagenet_a"]

IMAGENET_A_CLASSES = 200
load_imagenet_a = register_class_folder_set("imagenet_a", "imagenet-a", "imagenet-a.tar", IMAGENET_A_CLASSES, "ImageNet-A")
