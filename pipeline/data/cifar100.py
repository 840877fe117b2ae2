"""CIFAR-100 (Krizhevsky, 2009) from the python pickle files: 50,000 / 10,000 32×32 images, 100 classes.

Expected under ``data.root`` (``cifar-100-python.tar.gz`` unpacked)::

    root/cifar-100-python/train   pickle: b'data' (50000, 3072) uint8, b'fine_labels'
    root/cifar-100-python/test    pickle: b'data' (10000, 3072) uint8, b'fine_labels'
    root/cifar-100-python/meta    pickle: b'fine_label_names'

The files are read here rather than with ``torchvision.datasets.CIFAR100``:
torchvision checks the md5 sums of the real files (which generated test fixtures
cannot pass) and may download. Nothing is ever downloaded.

Transforms follow the reference code for CIFAR-100: the training transform of
every image data set, and at test time a plain resize to ``data.image_size``
(no centre crop: the reference resizes 32×32 straight to 224).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from .base import DatasetError, DataSource, ImageSpec, Normalization, register_dataset
from .image_folder import require_root
from .transforms import channel_normalization, check_options, crop_scale, eval_transform, image_mode, resize_interpolation, train_transform

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = ["ArrayImageDataset", "read_cifar_pickle", "load_cifar100"]

_logger = logging.getLogger(__name__)

FOLDER = "cifar-100-python"
IMAGE_SHAPE = (3, 32, 32)
TEST_RESIZE_RATIO = 1.0  # reference: transforms.Resize(224) on the 32×32 images, no crop

LAYOUT = (
    f"root/{FOLDER}/train, root/{FOLDER}/test and root/{FOLDER}/meta: the python version of CIFAR-100 "
    "(cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, unpacked into root)"
)


class ArrayImageDataset(Dataset):
    """Images held in memory as ``(N, H, W, 3)`` uint8, as ``(transform(image), label)``.

    Args:
        images: ``(N, H, W, 3)`` uint8 RGB images.
        targets: ``(N,)`` int labels.
        transform: maps a PIL image to a tensor.
        mode: PIL mode the images are converted to (``"RGB"`` or ``"L"``).
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Callable[[Any], Tensor], mode: str = "RGB") -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int):
        """The ``i``-th image as a PIL image in ``self.mode``, before the transform."""
        from PIL import Image

        image = Image.fromarray(self.images[i])  # (H, W, 3) uint8: RGB
        return image.convert(self.mode) if self.mode != "RGB" else image

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(self.load(i)), int(self.targets[i])


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"CIFAR-100 file {path} not found; expected {LAYOUT}")
    try:
        with open(path, "rb") as f:
            # The files are Python 2 pickles of byte-string keys: encoding="bytes" is the format's.
            data = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DatasetError(f"{path} is not a CIFAR-100 python pickle: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a CIFAR-100 python pickle: it holds a {type(data).__name__}, not a dict")
    return data


def _field(data: dict, key: bytes, path: Path) -> Any:
    if key not in data:
        raise DatasetError(f"{path} has no {key!r} entry; is it the python version of CIFAR-100?")
    return data[key]


def read_cifar_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-100 split file.

    Returns:
        ``images`` ``(N, 32, 32, 3)`` uint8 and fine ``labels`` ``(N,)`` int64.

    Raises:
        DatasetError: missing file, not a pickle, missing keys or wrong shapes.
    """
    data = _unpickle(path)
    raw = np.asarray(_field(data, b"data", path))
    labels = np.asarray(_field(data, b"fine_labels", path), dtype=np.int64)
    size = int(np.prod(IMAGE_SHAPE))
    if raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] != size:
        raise DatasetError(f"{path}: b'data' must be (N, {size}) uint8, got {raw.shape} {raw.dtype}")
    if len(labels) != len(raw):
        raise DatasetError(f"{path}: {len(raw)} images but {len(labels)} fine labels")
    images = np.ascontiguousarray(raw.reshape(-1, *IMAGE_SHAPE).transpose(0, 2, 3, 1))  # rows are R|G|B planes
    return images, labels


@register_dataset("cifar100")
def load_cifar100(cfg: DataConfig, normalization: Normalization = None) -> DataSource:
    """CIFAR-100 from the python pickles in ``data.root/cifar-100-python``."""
    check_options(cfg.name, cfg.options)
    folder = require_root(cfg, LAYOUT) / FOLDER
    if not folder.is_dir():
        raise DatasetError(f"CIFAR-100 folder {folder} not found; expected {LAYOUT}")
    meta_path = folder / "meta"
    names = _field(_unpickle(meta_path), b"fine_label_names", meta_path)
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train_images, train_targets = read_cifar_pickle(folder / "train")
    test_images, test_targets = read_cifar_pickle(folder / "test")
    for part, labels in (("train", train_targets), ("test", test_targets)):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise DatasetError(f"{folder / part}: fine labels must lie in [0, {len(class_names)}), the classes of {meta_path}")
    mode = image_mode(cfg.options)
    channels = len(mode)
    norm = channel_normalization(normalization, channels)
    scale, interpolation = crop_scale(cfg.options), resize_interpolation(cfg.options)
    fit = train_transform(cfg.image_size, norm, scale)
    measure = eval_transform(cfg.image_size, norm, TEST_RESIZE_RATIO, interpolation)
    _logger.info(
        "CIFAR-100 %s: %d classes, %d train / %d test images", folder, len(class_names), len(train_targets), len(test_targets)
    )
    return DataSource(
        name=cfg.name,
        train=ArrayImageDataset(train_images, train_targets, fit, mode),
        test=ArrayImageDataset(test_images, test_targets, measure, mode),
        train_targets=train_targets,
        test_targets=test_targets,
        class_names=class_names,
        input_shape=(channels, cfg.image_size, cfg.image_size),
        train_eval=ArrayImageDataset(train_images, train_targets, measure, mode),
        info={"root": str(folder)},
        images=ImageSpec(cfg.image_size, norm, TEST_RESIZE_RATIO, scale, interpolation),
    )
