"""Shared image transforms, options and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from pipeline.data import DatasetError
from pipeline.data.transforms import (
    IMAGENET_MEAN_STD,
    channel_normalization,
    check_options,
    crop_scale,
    eval_transform,
    image_mode,
    resolve_normalization,
    resize_interpolation,
    train_transform,
)


def _image(width: int = 20, height: int = 14) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def test_resolve_normalization_modes():
    assert resolve_normalization("none", "vit_base_patch16_224.augreg_in21k") is None
    assert resolve_normalization("imagenet", "anything") == IMAGENET_MEAN_STD
    mean, std = resolve_normalization("backbone", "vit_base_patch16_224.augreg_in21k")
    assert mean == (0.5, 0.5, 0.5) and std == (0.5, 0.5, 0.5)


def test_train_and_test_transform_shapes_and_randomness():
    image = _image()
    test = eval_transform(8)
    a, b = test(image), test(image)
    assert a.shape == (3, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b)  # deterministic
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    train = train_transform(8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = train(image)
        torch.manual_seed(0)
        same = train(image)
        other = train(image)
    assert x.shape == (3, 8, 8)
    assert torch.equal(x, same)  # the global generator drives it
    assert not torch.equal(x, other)


def test_eval_transform_resizes_then_crops():
    names = [type(t).__name__ for t in eval_transform(224).transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor"]
    assert eval_transform(224).transforms[0].size == 256
    assert eval_transform(224, resize_ratio=1.0).transforms[0].size == 224
    names = [type(t).__name__ for t in train_transform(224, ((0.5,) * 3, (0.5,) * 3)).transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]


def test_normalization_is_applied():
    image = _image()
    raw = eval_transform(8)(image)
    norm = eval_transform(8, ((0.5, 0.4, 0.3), (0.25, 0.2, 0.1)))(image)
    expected = (raw - torch.tensor([0.5, 0.4, 0.3])[:, None, None]) / torch.tensor([0.25, 0.2, 0.1])[:, None, None]
    assert_close(norm, expected)


def test_channel_normalization():
    rgb = ((0.2, 0.4, 0.6), (0.1, 0.2, 0.3))
    assert channel_normalization(None, 1) is None
    assert channel_normalization(rgb, 3) == rgb
    mean, std = channel_normalization(rgb, 1)
    assert mean == pytest.approx((0.4,)) and std == pytest.approx((0.2,))
    assert channel_normalization(((0.5,), (0.5,)), 3) == ((0.5,) * 3, (0.5,) * 3)
    with pytest.raises(DatasetError, match="does not fit"):
        channel_normalization(((0.1, 0.2), (0.1, 0.2)), 3)


def test_image_mode_and_options():
    assert image_mode({}) == "RGB"
    assert image_mode({"channels": 1}) == "L"
    with pytest.raises(DatasetError, match="data.options.channels"):
        image_mode({"channels": 2})
    check_options("domainnet", {"channels": 1, "domains": ["real"]}, allowed=("domains",))
    with pytest.raises(DatasetError, match=r"unknown key\(s\) \['colour'\].*allowed: \['channels', 'crop_scale', 'test_interpolation'\]"):
        check_options("cifar100", {"colour": 1})


def test_crop_scale_and_test_interpolation_options():
    """SD-LoRA's protocol: RandomResizedCrop scale (0.05, 1) and a bicubic test resize (utils/data.py build_transform)."""
    from torchvision.transforms import InterpolationMode

    assert crop_scale({}) == (0.08, 1.0) and resize_interpolation({}) == "bilinear"
    options = {"crop_scale": [0.05, 1.0], "test_interpolation": "bicubic"}
    assert train_transform(224, scale=crop_scale(options)).transforms[0].scale == (0.05, 1.0)
    assert eval_transform(224, interpolation=resize_interpolation(options)).transforms[0].interpolation == InterpolationMode.BICUBIC
    assert eval_transform(224).transforms[0].interpolation == InterpolationMode.BILINEAR
    check_options("imagenet_r", options)  # accepted by every image data set
    with pytest.raises(DatasetError, match=r"data.options.crop_scale must satisfy 0 < low <= high <= 1"):
        crop_scale({"crop_scale": [0.5, 0.1]})
    with pytest.raises(DatasetError, match=r"data.options.crop_scale must be two numbers"):
        crop_scale({"crop_scale": "big"})
    with pytest.raises(DatasetError, match=r"data.options.test_interpolation must be one of \['bilinear', 'bicubic'\]"):
        resize_interpolation({"test_interpolation": "nearest"})
