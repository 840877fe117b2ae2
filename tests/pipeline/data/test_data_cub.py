"""CUB-200-2011 in both layouts: the archive with its official split, and the pre-split copy."""

from __future__ import annotations

import os

import pytest

from data_fixtures import CUB_CLASSES, write_class_folders, write_cub_archive
from pipeline.config import DataConfig
from pipeline.data import DatasetError, load_dataset


def _cfg(root, **kw) -> DataConfig:
    return DataConfig(name="cub", root=str(root), image_size=8, **kw)


def test_archive_uses_the_official_split_and_class_ids(tmp_path):
    rows = write_cub_archive(tmp_path / "CUB_200_2011")
    for root in (tmp_path, tmp_path / "CUB_200_2011"):
        source = load_dataset(_cfg(root))
        assert source.class_names == CUB_CLASSES and source.has_test_split
        train = [(p, c - 1) for _, p, c, t in rows if t == 1]
        test = [(p, c - 1) for _, p, c, t in rows if t == 0]
        assert [os.fsdecode(f).split("images/")[1] for f in source.train.files] == [p for p, _ in train]
        assert source.train_targets.tolist() == [c for _, c in train]
        assert source.test_targets.tolist() == [c for _, c in test]
        assert source.test[0][0].shape == (3, 8, 8)


def test_pre_split_copy_is_read_as_class_folders(tmp_path):
    write_class_folders(tmp_path / "cub" / "train", CUB_CLASSES, per_class=3)
    write_class_folders(tmp_path / "cub" / "test", CUB_CLASSES, per_class=1, seed=1)
    source = load_dataset(_cfg(tmp_path))
    assert source.class_names == CUB_CLASSES and len(source.train) == 9 and len(source.test) == 3
    assert source.test_targets.tolist() == [0, 1, 2]


def test_missing_files_are_named(tmp_path):
    folder = tmp_path / "CUB_200_2011"
    rows = write_cub_archive(folder)
    (folder / "train_test_split.txt").unlink()
    with pytest.raises(DatasetError, match=r"lacks train_test_split.txt; expected root/CUB_200_2011/"):
        load_dataset(_cfg(tmp_path))
    write_cub_archive(folder)
    (folder / "images" / rows[2][1]).unlink()
    with pytest.raises(DatasetError, match=rf"1 image file\(s\) listed in .*images.txt not found, the first: .*{rows[2][1]}"):
        load_dataset(_cfg(tmp_path))
    (tmp_path / "other").mkdir()
    with pytest.raises(DatasetError, match=r"no CUB-200-2011 in .*other: neither"):
        load_dataset(_cfg(tmp_path / "other"))


def test_split_folders_reads_the_pre_split_copy_only(tmp_path):
    # RanPAC's protocol (cub_10_ranpac_official) reads ./data/cub/{train,test}/, never the archive's split
    write_cub_archive(tmp_path / "CUB_200_2011")
    with pytest.raises(DatasetError, match=r"split_folders: true needs the pre-split copy .*/train/<class>/ and .*/test/<class>/; .* has no train/ and test/"):
        load_dataset(_cfg(tmp_path, options={"split_folders": True}))
    write_class_folders(tmp_path / "cub" / "train", CUB_CLASSES, per_class=2)
    write_class_folders(tmp_path / "cub" / "test", CUB_CLASSES, per_class=1, seed=1)
    assert len(load_dataset(_cfg(tmp_path)).train) == 6  # both layouts present: the archive wins by default
    source = load_dataset(_cfg(tmp_path, options={"split_folders": True}))
    assert source.class_names == CUB_CLASSES and len(source.train) == 6 and len(source.test) == 3
    assert all("CUB_200_2011" not in os.fsdecode(f) for f in source.train.files)
