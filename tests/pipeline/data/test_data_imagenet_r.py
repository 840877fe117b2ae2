"""ImageNet-R from a generated class-folder copy; its seeded held-out test split."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from data_fixtures import WNIDS, imagenet_r_root, write_class_folders  # noqa: F401,F811  (fixture)
from pipeline.config import DataConfig
from pipeline.data import DatasetError, load_dataset, make_split
from pipeline.data.image_folder import ImageFileDataset


def _cfg(root, **kw) -> DataConfig:
    return DataConfig(name="imagenet_r", root=str(root), image_size=8, **kw)


def test_loads_class_folders(imagenet_r_root):
    source = load_dataset(_cfg(imagenet_r_root))
    assert source.class_names == WNIDS
    assert source.test is None and source.test_targets is None and not source.has_test_split
    assert source.train_targets.tolist() == [c for c in range(4) for _ in range(10)]
    assert source.input_shape == (3, 8, 8)
    assert isinstance(source.train, ImageFileDataset) and isinstance(source.train_eval, ImageFileDataset)
    image, label = source.train[13]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and label == 1
    a, b = source.train_eval[13][0], source.train_eval[13][0]
    assert torch.equal(a, b)  # test-time transforms: deterministic
    assert source.train.load(0).mode == "RGB"


def test_root_may_be_the_imagenet_r_folder(imagenet_r_root):
    inner = load_dataset(_cfg(imagenet_r_root / "imagenet-r"))
    outer = load_dataset(_cfg(imagenet_r_root))
    assert inner.class_names == outer.class_names
    assert np.array_equal(inner.train_targets, outer.train_targets)


def test_normalization_and_grayscale(imagenet_r_root):
    plain = load_dataset(_cfg(imagenet_r_root))
    norm = load_dataset(_cfg(imagenet_r_root), ((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)))
    torch.testing.assert_close(norm.train_eval[0][0], (plain.train_eval[0][0] - 0.5) / 0.2)
    gray = load_dataset(_cfg(imagenet_r_root, options={"channels": 1}))
    assert gray.input_shape == (1, 8, 8) and gray.train[0][0].shape == (1, 8, 8)


def test_held_out_test_split_is_seeded(imagenet_r_root):
    source = load_dataset(_cfg(imagenet_r_root))
    a = make_split(source, num_tasks=2, seed=0, class_order="fixed", val_fraction=0.1, test_fraction=0.2)
    again = make_split(source, num_tasks=2, seed=0, class_order="fixed", val_fraction=0.1, test_fraction=0.2)
    other = make_split(source, num_tasks=2, seed=1, class_order="fixed", val_fraction=0.1, test_fraction=0.2)
    assert a.test_from_train
    assert a.to_dict() == again.to_dict()
    assert a.test != other.test
    for split in (a, other):
        for t in range(2):
            train, val, test = set(split.train[t]), set(split.val[t]), set(split.test[t])
            assert not (train & test) and not (val & test) and not (train & val)
            assert len(test) == 4  # 20% of 10 images, 2 classes per task
            assert {int(source.train_targets[i]) for i in test} == set(split.task_classes[t])


def test_pre_split_copy_is_used(tmp_path):
    folder = tmp_path / "imr" / "imagenet-r"
    write_class_folders(folder / "train", WNIDS[:3], per_class=4)
    write_class_folders(folder / "test", WNIDS[:3], per_class=2, seed=1)
    source = load_dataset(_cfg(tmp_path / "imr"))
    assert source.has_test_split and len(source.test) == 6 and len(source.train) == 12
    assert source.test_targets.tolist() == [0, 0, 1, 1, 2, 2]


def test_split_folders_requires_the_pre_split_copy(tmp_path, imagenet_r_root):
    """SD-LoRA's protocol reads its own train/test folders: never a held-out split of the pool."""
    with pytest.raises(DatasetError, match=r"data.options.split_folders: true needs the pre-split copy .*train"):
        load_dataset(_cfg(imagenet_r_root, options={"split_folders": True}))
    folder = tmp_path / "imr2" / "imagenet-r"
    write_class_folders(folder / "train", WNIDS[:3], per_class=4)
    write_class_folders(folder / "test", WNIDS[:3], per_class=2, seed=1)
    assert load_dataset(_cfg(tmp_path / "imr2", options={"split_folders": True})).has_test_split


def test_missing_or_wrong_layout(tmp_path, imagenet_r_root):
    with pytest.raises(DatasetError, match=r"absent.*not a folder.*imagenet-r/<wnid>/<image>\.jpg"):
        load_dataset(_cfg(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no class folders in .*empty; expected root/imagenet-r/<wnid>"):
        load_dataset(_cfg(tmp_path / "empty"))
    for f in (imagenet_r_root / "imagenet-r" / WNIDS[2]).iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=rf"class folder .*{WNIDS[2]} holds no image"):
        load_dataset(_cfg(imagenet_r_root))


def test_missing_file_after_loading(imagenet_r_root):
    source = load_dataset(_cfg(imagenet_r_root))
    shutil.rmtree(imagenet_r_root / "imagenet-r" / WNIDS[0])
    with pytest.raises(DatasetError, match="image file not found"):
        source.train[0]
