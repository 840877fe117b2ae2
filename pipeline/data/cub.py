"""CUB-200-2011 (Wah et al., 2011): 11,788 images of 200 bird species.

Read in either layout a user may have:

* the archive ``CUB_200_2011.tgz`` as published, with its official train/test
  split (5,994 / 5,794 images)::

      root/CUB_200_2011/images/<class>/*.jpg       (root may also be the CUB_200_2011 folder itself)
      root/CUB_200_2011/images.txt                 <image id> <path under images/>
      root/CUB_200_2011/image_class_labels.txt     <image id> <class id, 1-200>
      root/CUB_200_2011/train_test_split.txt       <image id> <1: train, 0: test>
      root/CUB_200_2011/classes.txt                <class id> <class name>  (optional: names)

* the pre-split copy that InfLoRA's ``utils/data.py`` (``iCUB``), RanPAC and
  PILOT read (the RevisitingCIL preparation)::

      root/cub/train/<class>/*.jpg
      root/cub/test/<class>/*.jpg

Labels are the class ids minus one (the archive) or the sorted class folders
(the pre-split copy); both order ``001.Black_footed_Albatross`` … ``200.Common_Yellowthroat``
the same way.

``data.options.split_folders: true`` requires the pre-split copy and refuses the archive:
RanPAC's protocol (``utils/data.py`` ``CUB``: ``ImageFolder`` on ``./data/cub/{train,test}/``,
the RevisitingCIL preparation) reads those folders; their split is not checked against the archive's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .base import DatasetError, DataSource, Normalization, register_dataset
from .image_folder import image_source, load_class_folder_set, require_root
from .transforms import check_options

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = ["CUB_CLASSES", "load_cub"]

_logger = logging.getLogger(__name__)

CUB_CLASSES = 200
ARCHIVE = "CUB_200_2011"
ARCHIVE_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt")

LAYOUT = (
    f"root/{ARCHIVE}/ with images/<class>/<image>.jpg, {', '.join(ARCHIVE_FILES)} (CUB_200_2011.tgz unpacked; "
    "root may also be that folder), or a pre-split root/cub/{train,test}/<class>/<image>.jpg"
)


def _read_table(path: Path, columns: int) -> dict[int, list[str]]:
    """``<image id> <value>…`` lines of one archive file, keyed by id."""
    table: dict[int, list[str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=columns - 1)
        if len(fields) != columns or not fields[0].isdigit():
            raise DatasetError(f"{path}:{number}: expected '<image id> <value>', got {line!r}")
        table[int(fields[0])] = fields[1:]
    return table


def _archive_folder(root: Path) -> Path | None:
    for folder in (root / ARCHIVE, root):
        if (folder / "images.txt").is_file() or (folder / "images").is_dir():
            return folder
    return None


def _load_archive(cfg: "DataConfig", normalization: Normalization, folder: Path) -> DataSource:
    missing = [name for name in ARCHIVE_FILES if not (folder / name).is_file()]
    if missing or not (folder / "images").is_dir():
        absent = missing + ([] if (folder / "images").is_dir() else ["images/"])
        raise DatasetError(f"CUB-200-2011 in {folder} lacks {', '.join(absent)}; expected {LAYOUT}")
    paths = _read_table(folder / "images.txt", 2)
    labels = _read_table(folder / "image_class_labels.txt", 2)
    is_train = _read_table(folder / "train_test_split.txt", 2)
    if not (paths.keys() == labels.keys() == is_train.keys()):
        raise DatasetError(f"images.txt, image_class_labels.txt and train_test_split.txt in {folder} list different image ids")
    ids = sorted(paths)
    class_ids = sorted({int(labels[i][0]) for i in ids})
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise DatasetError(f"{folder / 'image_class_labels.txt'}: class ids must run 1..N, got {class_ids[:5]}…")
    names = {int(k): v[0] for k, v in _read_table(folder / "classes.txt", 2).items()} if (folder / "classes.txt").is_file() else {}
    folders: dict[int, str] = {}
    for i in ids:
        folders.setdefault(int(labels[i][0]), Path(paths[i][0]).parent.name)
    class_names = [names.get(c) or folders[c] for c in class_ids]
    pools: dict[bool, tuple[list[str], list[int]]] = {True: ([], []), False: ([], [])}
    for i in ids:
        flag = is_train[i][0]
        if flag not in ("0", "1"):
            raise DatasetError(f"{folder / 'train_test_split.txt'}: image {i} is marked {flag!r}, not 1 (train) or 0 (test)")
        files, targets = pools[flag == "1"]
        files.append(str(folder / "images" / paths[i][0]))
        targets.append(int(labels[i][0]) - 1)
    absent = [f for f in pools[True][0] + pools[False][0] if not Path(f).is_file()]
    if absent:
        raise DatasetError(f"{len(absent)} image file(s) listed in {folder / 'images.txt'} not found, the first: {absent[0]}")
    train, test = ((f, np.asarray(t, dtype=np.int64)) for f, t in (pools[True], pools[False]))
    _logger.info("CUB-200-2011 %s: %d classes, %d train / %d test images (official split)", folder, len(class_names), len(train[0]), len(test[0]))
    return image_source(cfg, normalization, train, test, class_names, info={"root": str(folder), "split": "official train_test_split.txt"})


@register_dataset("cub")
def load_cub(cfg: "DataConfig", normalization: Normalization = None) -> DataSource:
    """CUB-200-2011 from ``data.root``: the archive with its official split, or a pre-split copy
    (the only layout ``data.options.split_folders: true`` accepts)."""
    check_options(cfg.name, cfg.options, ("split_folders",))
    root = require_root(cfg, LAYOUT)
    archive = None if cfg.options.get("split_folders") else _archive_folder(root)
    if archive is not None:
        return _load_archive(cfg, normalization, archive)
    presplit = root / "cub" if (root / "cub").is_dir() else root
    if not ((presplit / "train").is_dir() and (presplit / "test").is_dir()) and not cfg.options.get("split_folders"):
        raise DatasetError(f"no CUB-200-2011 in {root}: neither {root / ARCHIVE}/images.txt nor {presplit}/train and test/; expected {LAYOUT}")
    return load_class_folder_set(cfg, normalization, "cub", LAYOUT, CUB_CLASSES, "CUB-200")  # refuses split_folders without the copy
