"""Tiny on-disk copies of the real data-set formats, and the fixtures that write them per test.

Every image is random noise of its own, small (16×12), so that loading goes
through the real code paths (PIL files, CIFAR pickles, DomainNet lists) in
milliseconds. Test modules import the fixtures they use from here: a
``conftest.py`` in this folder would shadow ``tests/conftest.py`` for the
modules that import it by name.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

WNIDS = ["n01443537", "n01484850", "n01494475", "n01496331"]
DOMAINNET_DOMAINS = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]
DOMAINNET_CLASSES = ["aircraft_carrier", "airplane", "alarm_clock"]
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (16, 12)) -> None:
    """A random RGB image of ``size`` (width, height) at ``path`` (format from the suffix)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_class_folders(folder: Path, classes: list[str], per_class: int, seed: int = 0, suffix: str = ".jpg") -> None:
    """``folder/<class>/img_000<suffix>``… with ``per_class`` random images per class."""
    rng = np.random.default_rng(seed)
    for name in classes:
        for i in range(per_class):
            write_image(folder / name / f"img_{i:03d}{suffix}", rng)


def write_untrained_backbone(cfg) -> None:
    """Write an untrained backbone of ``cfg.backbone``'s architecture to ``cfg.backbone.checkpoint``.

    The data tests check plumbing, not accuracy: they skip the MNIST pretraining
    of ``tests/conftest.py`` (10 to 30 s on a shared CPU).
    """
    import torch

    from model.backbone import create_backbone, save_backbone

    path = Path(cfg.backbone.checkpoint)
    if path.is_file():
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_backbone(cfg.backbone.name, pretrained=False, overrides=cfg.backbone.overrides)
    save_backbone(model, path)


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    """``root/cifar-100-python/{train,test,meta}``: 4 classes, 5 train and 2 test images each."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar" / "cifar-100-python"
    folder.mkdir(parents=True)
    for part, per_class in (("train", 5), ("test", 2)):
        labels = np.repeat(np.arange(4), per_class)
        rng.shuffle(labels)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        with open(folder / part, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": labels.tolist(), b"filenames": [b"x.png"] * len(labels)}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [b"apple", b"aquarium_fish", b"baby", b"bear"], b"coarse_label_names": []}, f)
    return tmp_path / "cifar"


@pytest.fixture
def imagenet_r_root(tmp_path: Path) -> Path:
    """``root/imagenet-r/<wnid>/*.jpg``: 4 classes × 10 images."""
    write_class_folders(tmp_path / "imr" / "imagenet-r", WNIDS, per_class=10)
    return tmp_path / "imr"


@pytest.fixture
def domainnet_root(tmp_path: Path) -> Path:
    """Official-format lists for the six domains: 3 classes, 2 train + 1 test image each per domain."""
    root = tmp_path / "domainnet"
    rng = np.random.default_rng(0)
    for domain in DOMAINNET_DOMAINS:
        lines = {"train": [], "test": []}
        for label, name in enumerate(DOMAINNET_CLASSES):
            for i in range(3):
                rel = f"{domain}/{name}/{domain}_{label:03d}_{i:06d}.jpg"
                write_image(root / rel, rng)
                lines["train" if i < 2 else "test"].append(f"{rel} {label}\n")
        for part, part_lines in lines.items():
            (root / f"{domain}_{part}.txt").write_text("".join(part_lines))
    return root


@pytest.fixture
def image_folder_split_root(tmp_path: Path) -> Path:
    """``root/{train,test}/<class>/*.png``: 3 classes, 4 train and 2 test images each."""
    root = tmp_path / "mine"
    write_class_folders(root / "train", ["cat", "bird", "dog"], per_class=4, seed=1, suffix=".png")
    write_class_folders(root / "test", ["cat", "bird", "dog"], per_class=2, seed=2, suffix=".png")
    return root


def write_cub_archive(folder: Path, per_class: int = 4, seed: int = 0) -> list[tuple[int, str, int, int]]:
    """``folder`` as ``CUB_200_2011.tgz`` unpacks: ``images/<class>/*.jpg`` and the three id tables.

    Image ids run over the classes in order (as the real ``images.txt``); every
    second image of a class is a test image. Returns ``(id, path, class id, is_train)`` rows.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for c, name in enumerate(CUB_CLASSES, 1):
        for i in range(per_class):
            relative = f"{name}/{name.split('.')[1]}_{i:04d}_{c}.jpg"
            write_image(folder / "images" / relative, rng)
            rows.append((len(rows) + 1, relative, c, 1 - i % 2))
    (folder / "images.txt").write_text("".join(f"{i} {p}\n" for i, p, _, _ in rows))
    (folder / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, _ in rows))
    (folder / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t in rows))
    (folder / "classes.txt").write_text("".join(f"{c} {n}\n" for c, n in enumerate(CUB_CLASSES, 1)))
    return rows
