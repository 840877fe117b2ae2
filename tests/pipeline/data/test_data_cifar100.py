"""CIFAR-100 from generated python pickles."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from data_fixtures import cifar_root  # noqa: F401,F811  (fixture)
from pipeline.config import DataConfig
from pipeline.data import DatasetError, load_dataset


def _cfg(root, **kw) -> DataConfig:
    return DataConfig(name="cifar100", root=str(root), image_size=kw.pop("image_size", 16), **kw)


def test_loads_pickles(cifar_root):
    source = load_dataset(_cfg(cifar_root))
    with open(cifar_root / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert source.class_names == ["apple", "aquarium_fish", "baby", "bear"]
    assert source.input_shape == (3, 16, 16)
    assert source.has_test_split
    assert source.train_targets.dtype == np.int64 and source.test_targets.dtype == np.int64
    assert source.train_targets.tolist() == raw[b"fine_labels"]
    assert len(source.train) == 20 and len(source.test) == 8 and len(source.measure_pool) == 20
    image, label = source.test[3]
    assert image.shape == (3, 16, 16) and label == int(source.test_targets[3])
    # Test transform at ratio 1 (the reference's Resize(224)): the 32×32 image resized, pixel order kept.
    source32 = load_dataset(_cfg(cifar_root, image_size=32))
    expected = torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32)).float() / 255
    assert_close(source32.train_eval[0][0], expected)


def test_train_transform_is_random_and_normalization_applied(cifar_root):
    plain = load_dataset(_cfg(cifar_root, image_size=32))
    norm = load_dataset(_cfg(cifar_root, image_size=32), ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert_close(norm.test[0][0], (plain.test[0][0] - 0.5) / 0.25)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        a, b = plain.train[0][0], plain.train[0][0]
    assert a.shape == (3, 32, 32) and not torch.equal(a, b)


def test_grayscale_option(cifar_root):
    source = load_dataset(_cfg(cifar_root, options={"channels": 1}), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    assert source.input_shape == (1, 16, 16)
    assert source.train[0][0].shape == (1, 16, 16) and source.test[0][0].shape == (1, 16, 16)


def test_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar-100-python.*cifar-100-python/train.*meta"):
        load_dataset(_cfg(tmp_path))
    with pytest.raises(DatasetError, match=r"not a folder"):
        load_dataset(_cfg(tmp_path / "absent"))
    with pytest.raises(DatasetError, match=r"needs data.root"):
        load_dataset(DataConfig(name="cifar100"))


def test_wrong_files(cifar_root):
    (cifar_root / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DatasetError, match=r"meta not found"):
        load_dataset(_cfg(cifar_root))
    (cifar_root / "cifar-100-python" / "meta").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=r"not a CIFAR-100 python pickle"):
        load_dataset(_cfg(cifar_root))
    with open(cifar_root / "cifar-100-python" / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [b"a", b"b"]}, f)  # labels 2, 3 have no name
    with pytest.raises(DatasetError, match=r"fine labels must lie in \[0, 2\)"):
        load_dataset(_cfg(cifar_root))
    with open(cifar_root / "cifar-100-python" / "train", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}, f)
    with pytest.raises(DatasetError, match=r"b'data' must be \(N, 3072\) uint8"):
        load_dataset(_cfg(cifar_root))


def test_unknown_option(cifar_root):
    with pytest.raises(DatasetError, match="unknown key"):
        load_dataset(_cfg(cifar_root, options={"domains": ["real"]}))
