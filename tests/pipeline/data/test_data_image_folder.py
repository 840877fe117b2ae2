"""The user's own images: train/test class folders, flat class folders, and a run on them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data_fixtures import image_folder_split_root, write_class_folders, write_untrained_backbone  # noqa: F401,F811  (fixture)
from pipeline.config import DataConfig
from pipeline.data import DatasetError, load_dataset, make_split


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """Overrides ``tests/conftest.py``'s pretrained tiny backbone in this module: only a path.

    ``tiny_config`` keeps its architecture; the run test writes an untrained
    backbone there (:func:`data_fixtures.write_untrained_backbone`): it checks
    the data plumbing, not accuracy, and skips the MNIST pretraining.
    """
    return tmp_path_factory.mktemp("untrained_backbone") / "tiny.safetensors"


def _cfg(root, **kw) -> DataConfig:
    return DataConfig(name="image_folder", root=str(root), image_size=8, **kw)


def test_train_test_layout(image_folder_split_root):
    source = load_dataset(_cfg(image_folder_split_root))
    assert source.class_names == ["bird", "cat", "dog"]  # sorted by name
    assert source.has_test_split
    assert source.train_targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert source.test_targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert source.test[5][0].shape == (3, 8, 8) and source.test[5][1] == 2
    assert len(source.measure_pool) == 12
    assert source.info["layout"] == "train/test"


def test_flat_layout_holds_out_test(tmp_path):
    write_class_folders(tmp_path / "flat", ["a", "b"], per_class=6, suffix=".png")
    (tmp_path / "flat" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "flat" / ".cache").mkdir()
    source = load_dataset(_cfg(tmp_path / "flat"))
    assert source.class_names == ["a", "b"] and source.test is None
    assert np.bincount(source.train_targets).tolist() == [6, 6]
    split = make_split(source, num_tasks=2, seed=3, test_fraction=0.5)
    assert split.test_from_train and [len(t) for t in split.test] == [3, 3]


def test_grayscale_option(image_folder_split_root):
    source = load_dataset(_cfg(image_folder_split_root, options={"channels": 1}), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    assert source.input_shape == (1, 8, 8)
    image = source.train[0][0]
    assert image.shape == (1, 8, 8) and float(image.min()) >= -1.0 and float(image.max()) <= 1.0
    assert source.train.load(0).mode == "L"


def test_wrong_layouts(tmp_path, image_folder_split_root):
    import shutil

    with pytest.raises(DatasetError, match=r"needs data.root: a folder laid out as root/train/<class>/<image>"):
        load_dataset(DataConfig(name="image_folder"))
    shutil.rmtree(image_folder_split_root / "test")
    with pytest.raises(DatasetError, match=r"has a train/ folder but no test/ folder; expected root/train/<class>"):
        load_dataset(_cfg(image_folder_split_root))
    write_class_folders(image_folder_split_root / "test", ["cat", "dog", "fox"], per_class=1)
    with pytest.raises(DatasetError, match=r"differ from the training classes: missing \['bird'\], extra \['fox'\]"):
        load_dataset(_cfg(image_folder_split_root))


def test_two_task_run_on_an_image_folder(tmp_path, tiny_config):
    """End to end: 2 tasks of 2 classes of grayscale 8×8 images on the tiny 1-channel backbone."""
    from pipeline.running.runner import execute, make_specs

    root = tmp_path / "images"
    write_class_folders(root, ["c0", "c1", "c2", "c3"], per_class=10, suffix=".png")
    cfg = tiny_config(
        data={"name": "image_folder", "root": str(root), "num_tasks": 2, "image_size": 8, "options": {"channels": 1}},
        tracking={"enabled": False},
    )
    write_untrained_backbone(cfg)  # see tiny_checkpoint above
    (outcome,) = execute(make_specs(cfg), progress=False)
    assert outcome.status == "FINISHED", outcome.error
    split = outcome.run_dir.read_json("split.json")
    assert split["test_from_train"] and [len(t) for t in split["test"]] == [4, 4]
    test = outcome.results().test.to_numpy()
    assert test.shape == (2, 2)
    assert all(0.0 <= test[s, t] <= 1.0 for s in range(2) for t in range(s + 1))
    assert math.isnan(test[0, 1])
