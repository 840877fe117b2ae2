"""Image files on disk: a lazy dataset, folder scanning, and the ``image_folder`` data set.

``image_folder`` loads a user's own images, one folder per class, in either layout::

    root/train/<class>/*.jpg       root/<class>/*.jpg
    root/test/<class>/*.jpg

Classes are the folder names sorted by name (label = position). With the
``train``/``test`` layout both must hold the same class folders; with the flat
layout there is no test split and the split stage holds out
``data.test_fraction`` of every class, seeded by the run's seed.

The helpers here (:class:`ImageFileDataset`, :func:`scan_class_folders`,
:func:`image_source`) are shared by the other file-based data sets (ImageNet-R,
DomainNet).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from .base import DatasetError, DataSource, ImageSpec, Normalization, register_dataset
from .transforms import (
    TEST_RESIZE_RATIO,
    channel_normalization,
    check_options,
    crop_scale,
    eval_transform,
    image_mode,
    resize_interpolation,
    train_transform,
)

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFileDataset",
    "path_array",
    "require_root",
    "list_class_folders",
    "scan_class_folders",
    "image_source",
    "load_class_folder_set",
    "register_class_folder_set",
    "load_image_folder",
]

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File endings read as images (torchvision's ``IMG_EXTENSIONS``), case-insensitive."""

IMAGE_FOLDER_LAYOUT = (
    "root/train/<class>/<image> and root/test/<class>/<image> (the same class folders in both), "
    "or root/<class>/<image> without a test split"
)


def path_array(files: Sequence[str] | np.ndarray) -> np.ndarray:
    """File paths as a numpy bytes array.

    Not a list of ``str``: DataLoader workers forked from this process share the
    array instead of copying every string as its reference count moves, and bytes
    take a quarter of numpy's unicode storage (DomainNet lists 586k paths).
    """
    if isinstance(files, np.ndarray) and files.dtype.kind == "S":
        return files
    return np.array([os.fsencode(f) for f in files], dtype=bytes)


class ImageFileDataset(Dataset):
    """Images read from files on access, as ``(transform(image), label)``.

    Args:
        files: image paths, aligned with ``targets``.
        targets: ``(N,)`` int labels.
        transform: maps a PIL image to a tensor.
        mode: PIL mode the images are converted to (``"RGB"`` or ``"L"``).
    """

    def __init__(self, files: Sequence[str], targets: np.ndarray, transform: Callable[[Any], Tensor], mode: str = "RGB") -> None:
        if len(files) != len(targets):
            raise ValueError(f"{len(files)} files but {len(targets)} labels")
        self.files = path_array(files)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int):
        """The ``i``-th image as a PIL image in ``self.mode``, before the transform."""
        from PIL import Image

        path = os.fsdecode(self.files[i])
        try:
            with open(path, "rb") as f:
                return Image.open(f).convert(self.mode)
        except FileNotFoundError as exc:
            raise DatasetError(f"image file not found: {path}") from exc
        except OSError as exc:  # PIL's UnidentifiedImageError and truncated files
            raise DatasetError(f"cannot read image {path}: {exc}") from exc

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(self.load(i)), int(self.targets[i])


def require_root(cfg: DataConfig, layout: str) -> Path:
    """``data.root`` as an existing folder.

    Raises:
        DatasetError: unset or missing; the message says what the folder must hold.
    """
    if cfg.root is None:
        raise DatasetError(f"data set {cfg.name!r} needs data.root: a folder laid out as {layout}")
    root = Path(cfg.root)
    if not root.is_dir():
        raise DatasetError(f"data.root {root} of data set {cfg.name!r} is not a folder; put the files there laid out as {layout}")
    return root


def _visible(name: str) -> bool:
    return not name.startswith(".")


def list_class_folders(folder: Path) -> list[str]:
    """Names of the (non-hidden) subfolders of ``folder``, sorted."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and _visible(e.name))


def _image_files(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _visible(f) and f.lower().endswith(IMAGE_EXTENSIONS))
    return found


def scan_class_folders(
    folder: Path, layout: str, class_names: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray, list[str]]:
    """Image files under ``folder/<class>/`` (searched recursively) and their labels.

    Args:
        folder: holds one subfolder per class.
        layout: expected layout, for error messages.
        class_names: the classes to expect (e.g. those of the training folder);
            the sorted subfolders of ``folder`` when ``None``.

    Returns:
        ``(files, targets, class_names)``; label ``k`` is ``class_names[k]``.

    Raises:
        DatasetError: no class folder, a class folder without images, or
            folders that differ from ``class_names``.
    """
    found = list_class_folders(folder)
    if not found:
        raise DatasetError(f"no class folders in {folder}; expected {layout}")
    if class_names is None:
        class_names = found
    elif found != sorted(class_names):
        missing, extra = sorted(set(class_names) - set(found)), sorted(set(found) - set(class_names))
        raise DatasetError(
            f"class folders of {folder} differ from the training classes: missing {missing[:10]}, extra {extra[:10]}"
        )
    files: list[str] = []
    targets: list[int] = []
    for label, name in enumerate(class_names):
        images = _image_files(folder / name)
        if not images:
            raise DatasetError(f"class folder {folder / name} holds no image ({', '.join(IMAGE_EXTENSIONS)}); expected {layout}")
        files.extend(images)
        targets.extend([label] * len(images))
    return files, np.asarray(targets, dtype=np.int64), list(class_names)


def image_source(
    cfg: DataConfig,
    normalization: Normalization,
    train: tuple[Sequence[str], np.ndarray],
    test: tuple[Sequence[str], np.ndarray] | None,
    class_names: list[str],
    *,
    resize_ratio: float = TEST_RESIZE_RATIO,
    info: dict[str, str] | None = None,
) -> DataSource:
    """A :class:`DataSource` of image files with the standard transforms.

    Args:
        cfg: the data section (``name``, ``image_size``, ``options.channels``, ``options.crop_scale``,
            ``options.test_interpolation``).
        normalization: ``(mean, std)`` or ``None`` (images in [0, 1]).
        train: training files and labels.
        test: test files and labels, or ``None`` (split stage holds out a test split).
        class_names: name of every label.
        resize_ratio: see :func:`pipeline.data.transforms.eval_transform`.
        info: extra descriptions kept on the source.
    """
    mode = image_mode(cfg.options)
    channels = len(mode)
    norm = channel_normalization(normalization, channels)
    scale, interpolation = crop_scale(cfg.options), resize_interpolation(cfg.options)
    fit = train_transform(cfg.image_size, norm, scale)
    measure = eval_transform(cfg.image_size, norm, resize_ratio, interpolation)
    train_files, train_targets = path_array(train[0]), train[1]  # shared by train and train_eval
    test_set, test_targets = None, None
    if test is not None:
        test_set = ImageFileDataset(test[0], test[1], measure, mode)
        test_targets = test_set.targets
    train_set = ImageFileDataset(train_files, train_targets, fit, mode)
    return DataSource(
        name=cfg.name,
        train=train_set,
        test=test_set,
        train_targets=train_set.targets,
        test_targets=test_targets,
        class_names=list(class_names),
        input_shape=(channels, cfg.image_size, cfg.image_size),
        train_eval=ImageFileDataset(train_files, train_targets, measure, mode),
        info=dict(info or {}),
        images=ImageSpec(cfg.image_size, norm, resize_ratio, scale, interpolation),
    )


def scan_pools(
    folder: Path, layout: str, presplit: bool
) -> tuple[list[str], np.ndarray, list[str], tuple[list[str], np.ndarray] | None]:
    """``(train files, train labels, classes, test pool or None)`` of ``folder/{train,test}/<class>/`` or ``folder/<class>/``."""
    if not presplit:
        return (*scan_class_folders(folder, layout), None)
    train_files, train_targets, classes = scan_class_folders(folder / "train", layout)
    test_files, test_targets, _ = scan_class_folders(folder / "test", layout, classes)
    return train_files, train_targets, classes, (test_files, test_targets)


def load_class_folder_set(
    cfg: DataConfig, normalization: Normalization, folder_name: str, layout: str, num_classes: int, display: str
) -> DataSource:
    """A data set of ``<class>/*.jpg`` folders: pre-split ``{train,test}/`` folders, or one pool without a test split.

    ``data.root`` may hold ``folder_name`` (``imagenet-r``) or be it. Without
    ``train/`` and ``test/`` folders the test split is held out by the split stage
    (``data.split_seed`` / ``data.test_fraction``), or declared with ``data.split_file``;
    ``data.options.split_folders: true`` requires the pre-split copy (a protocol that
    reads ``{train,test}/``, as SD-LoRA's) and refuses to hold out a split of its own.

    Args:
        cfg: the data section.
        normalization: see :func:`image_source`.
        folder_name: the folder the archive unpacks to.
        layout: the expected layouts, for error messages.
        num_classes: the data set's class count (a different count is logged as a warning).
        display: the data set's name in messages (``ImageNet-R``).
    """
    check_options(cfg.name, cfg.options, ("split_folders",))
    root = require_root(cfg, layout)
    folder = root / folder_name if (root / folder_name).is_dir() else root
    presplit = (folder / "train").is_dir() and (folder / "test").is_dir()
    if cfg.options.get("split_folders") and not presplit:
        raise DatasetError(
            f"data.options.split_folders: true needs the pre-split copy {folder / 'train'}/<class>/ and {folder / 'test'}/<class>/; "
            f"{folder} has no train/ and test/ folders"
        )
    train_files, train_targets, classes, test = scan_pools(folder, layout, presplit)
    split = "pre-split train/test folders" if presplit else "test held out by the split stage (data.split_seed / data.test_fraction)"
    if len(classes) != num_classes:
        _logger.warning("%s in %s has %d class folders, not %d", display, folder, len(classes), num_classes)
    _logger.info("%s %s: %d classes, %d images; %s", display, folder, len(classes), len(train_files), split)
    return image_source(cfg, normalization, (train_files, train_targets), test, classes, info={"root": str(folder), "split": split})


def register_class_folder_set(name: str, folder_name: str, archive: str, num_classes: int, display: str):
    """Register data set ``name``: :func:`load_class_folder_set` of the ``folder_name`` that ``archive`` unpacks to.

    Returns the loader; its layout (in every error message) names both forms.
    """
    layout = (
        f"root/{folder_name}/<wnid>/<image>.jpg with the {num_classes} class folders of {archive} (root may also be the "
        f"{folder_name} folder itself), or a pre-split root/{folder_name}/{{train,test}}/<wnid>/<image>.jpg"
    )

    def load(cfg: DataConfig, normalization: Normalization = None) -> DataSource:
        return load_class_folder_set(cfg, normalization, folder_name, layout, num_classes, display)

    load.__name__ = f"load_{name}"
    load.__doc__ = f"{display} from ``data.root``; without a pre-split copy the test split is held out by the split stage."
    return register_dataset(name)(load)


@register_dataset("image_folder")
def load_image_folder(cfg: DataConfig, normalization: Normalization = None) -> DataSource:
    """The user's images in ``data.root``: ``train/`` + ``test/`` class folders, or class folders alone."""
    check_options(cfg.name, cfg.options)
    root = require_root(cfg, IMAGE_FOLDER_LAYOUT)
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        present, absent = ("train", "test") if has_train else ("test", "train")
        raise DatasetError(
            f"{root} has a {present}/ folder but no {absent}/ folder; expected {IMAGE_FOLDER_LAYOUT} "
            f"(add {root / absent}, or rename {root / present} if it is a class)"
        )
    train_files, train_targets, classes, test = scan_pools(root, IMAGE_FOLDER_LAYOUT, has_train)
    _logger.info("image_folder %s: %d classes, %d training images", root, len(classes), len(train_files))
    layout = "train/test" if test is not None else "flat (test held out per run seed)"
    info = {"root": str(root), "layout": layout}
    return image_source(cfg, normalization, (train_files, train_targets), test, classes, info=info)
