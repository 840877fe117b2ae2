"""ImageNet-A in both layouts: the pre-split copy InfLoRA/PILOT read, and the archive without a split."""

from __future__ import annotations

import pytest

from data_fixtures import WNIDS, write_class_folders
from pipeline.config import DataConfig
from pipeline.data import DatasetError, load_dataset, make_split


def _cfg(root, **kw) -> DataConfig:
    return DataConfig(name="imagenet_a", root=str(root), image_size=8, **kw)


def test_pre_split_copy_keeps_its_train_and_test_folders(tmp_path):
    folder = tmp_path / "data" / "imagenet-a"
    write_class_folders(folder / "train", WNIDS[:3], per_class=4)
    write_class_folders(folder / "test", WNIDS[:3], per_class=2, seed=1)
    for root in (tmp_path / "data", folder):  # data.root holds imagenet-a/ or is it
        source = load_dataset(_cfg(root))
        assert source.has_test_split and source.class_names == WNIDS[:3]
        assert source.train_targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert source.test_targets.tolist() == [0, 0, 1, 1, 2, 2]
        assert source.train[0][0].shape == (3, 8, 8)


def test_archive_without_split_holds_out_the_test_split(tmp_path):
    write_class_folders(tmp_path / "imagenet-a", WNIDS, per_class=5)
    (tmp_path / "imagenet-a" / "README.txt").write_text("not a class")
    source = load_dataset(_cfg(tmp_path))
    assert not source.has_test_split and source.class_names == WNIDS and len(source.train) == 20
    split = make_split(source, num_tasks=2, seed=0, class_order="fixed", val_fraction=0.0, test_fraction=0.2)
    assert split.test_from_train and all(len(t) == 2 for t in split.test)


def test_archive_with_a_declared_split_file(tmp_path):
    write_class_folders(tmp_path / "imagenet-a", WNIDS[:2], per_class=3)
    listing = tmp_path / "train.txt"
    listing.write_text(f"{WNIDS[0]}/img_000.jpg 0\n{WNIDS[1]}/img_001.jpg 1\n")
    source = load_dataset(_cfg(tmp_path / "imagenet-a", split_file=str(listing)))
    assert source.train_targets.tolist() == [0, 1]


def test_missing_files_name_the_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"absent.*not a folder.*imagenet-a/<wnid>/<image>\.jpg.*imagenet-a/\{train,test\}/<wnid>"):
        load_dataset(_cfg(tmp_path / "absent"))
    (tmp_path / "empty" / "imagenet-a").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no class folders in .*imagenet-a; expected root/imagenet-a/<wnid>"):
        load_dataset(_cfg(tmp_path / "empty"))
