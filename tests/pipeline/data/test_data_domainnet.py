"""DomainNet from generated official-format file lists."""

from __future__ import annotations

import numpy as np
import pytest

from data_fixtures import DOMAINNET_CLASSES, DOMAINNET_DOMAINS, domainnet_root  # noqa: F401,F811  (fixture)
from pipeline.config import DataConfig
from pipeline.data import DatasetError, load_dataset, make_split
from pipeline.data.domainnet import read_file_list


def _cfg(root, **kw) -> DataConfig:
    return DataConfig(name="domainnet", root=str(root), image_size=8, **kw)


def test_loads_all_domains(domainnet_root):
    source = load_dataset(_cfg(domainnet_root))
    assert source.class_names == DOMAINNET_CLASSES
    assert len(source.train) == 6 * 3 * 2 and len(source.test) == 6 * 3
    assert source.info["domains"] == ",".join(DOMAINNET_DOMAINS)
    assert np.bincount(source.train_targets).tolist() == [12, 12, 12]
    image, label = source.test[0]
    assert image.shape == (3, 8, 8) and label == 0
    split = make_split(source, num_tasks=3, seed=0, class_order="fixed", val_fraction=0.0)
    assert not split.test_from_train
    assert [sorted({int(source.test_targets[i]) for i in t}) for t in split.test] == [[0], [1], [2]]


def test_domains_filter(domainnet_root):
    source = load_dataset(_cfg(domainnet_root, options={"domains": ["sketch", "clipart"]}))
    assert source.info["domains"] == "clipart,sketch"  # canonical order
    files = [f.decode() for f in source.train.files]
    assert len(files) == 2 * 3 * 2
    assert all("/clipart/" in f for f in files[:6]) and all("/sketch/" in f for f in files[6:])
    assert len(load_dataset(_cfg(domainnet_root, options={"domains": "real"})).test) == 3


def test_bad_domains(domainnet_root):
    with pytest.raises(DatasetError, match=r"unknown domain\(s\) \['photo'\]"):
        load_dataset(_cfg(domainnet_root, options={"domains": ["photo"]}))
    with pytest.raises(DatasetError, match="twice"):
        load_dataset(_cfg(domainnet_root, options={"domains": ["real", "real"]}))
    with pytest.raises(DatasetError, match="non-empty list"):
        load_dataset(_cfg(domainnet_root, options={"domains": []}))


def test_read_file_list(domainnet_root):
    files, labels, names = read_file_list(domainnet_root / "real_train.txt", domainnet_root)
    assert labels == [0, 0, 1, 1, 2, 2]
    assert names == dict(enumerate(DOMAINNET_CLASSES))
    assert files[0] == str(domainnet_root / "real/aircraft_carrier/real_000_000000.jpg")


def test_missing_lists_and_images(tmp_path, domainnet_root):
    with pytest.raises(DatasetError, match=r"clipart_train\.txt not found; expected root/<domain>_train\.txt"):
        load_dataset(_cfg(tmp_path))
    (domainnet_root / "quickdraw_test.txt").unlink()
    with pytest.raises(DatasetError, match=r"quickdraw_test\.txt not found"):
        load_dataset(_cfg(domainnet_root))
    (domainnet_root / "real_train.txt").write_text("real/airplane/missing.jpg 1\n")
    with pytest.raises(DatasetError, match=r"missing\.jpg, which does not exist: unpack the real images"):
        load_dataset(_cfg(domainnet_root, options={"domains": ["real"]}))


def test_malformed_lists(domainnet_root):
    (domainnet_root / "real_train.txt").write_text("real/airplane/real_001_000000.jpg\n")
    with pytest.raises(DatasetError, match=r"real_train\.txt:1: expected '<relative path> <label>'"):
        load_dataset(_cfg(domainnet_root, options={"domains": ["real"]}))
    (domainnet_root / "real_train.txt").write_text(
        "real/airplane/real_001_000000.jpg 0\nreal/aircraft_carrier/real_000_000000.jpg 0\n"
    )
    with pytest.raises(DatasetError, match=r"real_train\.txt:2: label 0 is class 'airplane' earlier"):
        load_dataset(_cfg(domainnet_root, options={"domains": ["real"]}))
    (domainnet_root / "real_train.txt").write_text("real/alarm_clock/real_002_000000.jpg 2\n")
    with pytest.raises(DatasetError, match=r"no image of label\(s\) \[0, 1\]"):
        load_dataset(_cfg(domainnet_root, options={"domains": ["real"]}))
