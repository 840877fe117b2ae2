"""The device path (decoded cache + batch transforms) against the PIL path, pixel by pixel.

Tolerance, stated: on the same crop box and flip, the device resize
(``interpolate(bilinear, antialias=True)``, rounded to 8-bit levels) differs
from PIL's bilinear resize by at most 1 level of 255 at any pixel, and by
less than 0.25 level on average (measured: 0.16); test-time inputs are identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from pipeline.data.base import ImageSpec
from pipeline.data.batch_transforms import CROP_RATIO, CROP_SCALE, sample_crop, sample_crops
from pipeline.data.device_loader import device_batches
from pipeline.data.image_folder import ImageFileDataset
from pipeline.data.transforms import eval_transform, train_transform

MAX_LEVELS = 1
MEAN_LEVELS = 0.25
NORM = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


def _photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth gradients plus noise: resizing behaves as on photographs, not only on white noise."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * (c + 1) * 255 / width + y * 128 / height) % 256 for c in range(3)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def pool(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [(61, 83), (120, 90), (47, 47), (200, 33), (33, 150), (96, 128)]
    files = []
    for k, (h, w) in enumerate(sizes):
        path = tmp_path / "img" / f"{k}.png"  # lossless: both paths read the same pixels
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(_photo_like(rng, h, w)).save(path)
        files.append(str(path))
    return ImageFileDataset(files, np.arange(len(files)) % 2, train_transform(32, NORM), "RGB")


@pytest.mark.parametrize("scale", [CROP_SCALE, (0.05, 1.0)])  # torchvision's default; SD-LoRA's data.options.crop_scale
def test_crop_sampling_is_torchvisions_get_params_then_flip(scale):
    image = Image.new("RGB", (83, 61))
    for seed in range(200):
        torch.manual_seed(seed)
        i, j, h, w = T.RandomResizedCrop.get_params(image, list(scale), list(CROP_RATIO))
        flip = bool(torch.rand(1) < 0.5)
        assert sample_crop(61, 83, torch.Generator().manual_seed(seed), scale) == (i, j, h, w, flip)


def test_extreme_aspect_ratios_fall_back_to_the_central_crop_like_torchvision():
    image = Image.new("RGB", (400, 3))
    torch.manual_seed(5)
    expected = T.RandomResizedCrop.get_params(image, list(CROP_SCALE), list(CROP_RATIO))
    assert sample_crop(3, 400, torch.Generator().manual_seed(5))[:4] == expected


def test_training_batches_match_pil_on_the_same_boxes(pool, tmp_path):
    spec = ImageSpec(32, NORM, 256 / 224)
    gen = torch.Generator().manual_seed(3)
    batches = device_batches(pool, spec, range(len(pool)), {0: 0, 1: 1}, 4, train=True, device=torch.device("cpu"),
                             generator=gen, cache_dir=str(tmp_path / "cache"))
    probe = torch.Generator().manual_seed(3)
    order = torch.randperm(len(pool), generator=probe).tolist()
    epoch_seed = int(torch.randint(0, (1 << 63) - 1, (1,), generator=probe).item())
    from pipeline.data.batch_transforms import derive_seed

    got = torch.cat([x for x, _ in batches])
    boxes = [b for k in range(2) for b in sample_crops([pool.load(i).size[::-1] for i in order[4 * k : 4 * k + 4]], derive_seed(epoch_seed, k))]
    to_uint8 = T.Compose([T.PILToTensor()])
    mean, std = torch.tensor(NORM[0]).view(3, 1, 1), torch.tensor(NORM[1]).view(3, 1, 1)
    diffs = []
    for row, (i, (top, left, h, w, flip)) in enumerate(zip(order, boxes)):
        ref = T.functional.resized_crop(pool.load(i), top, left, h, w, [32, 32])
        if flip:
            ref = T.functional.hflip(ref)
        levels = (got[row] * std + mean) * 255
        diffs.append((levels - to_uint8(ref).float()).abs())
    diff = torch.stack(diffs)
    assert diff.max() <= MAX_LEVELS + 1e-3, diff.max()
    assert diff.mean() < MEAN_LEVELS, diff.mean()


def test_same_generator_state_gives_identical_epochs(pool, tmp_path):
    spec = ImageSpec(32, None, 256 / 224)

    def epoch(seed: int) -> torch.Tensor:
        loader = device_batches(pool, spec, range(len(pool)), {0: 0, 1: 1}, 4, train=True, device=torch.device("cpu"),
                                generator=torch.Generator().manual_seed(seed), cache_dir=str(tmp_path / "cache"), num_workers=2)
        return torch.cat([x for x, _ in loader])

    assert torch.equal(epoch(1), epoch(1))  # worker count and timing do not enter
    assert not torch.equal(epoch(1), epoch(2))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_test_time_batches_equal_the_pil_transform(pool, tmp_path, interpolation):
    spec = ImageSpec(32, NORM, 256 / 224, interpolation=interpolation)
    batches = device_batches(pool, spec, [5, 0, 3], {0: 0, 1: 1}, 2, train=False, device=torch.device("cpu"), cache_dir=str(tmp_path / "c"))
    images, labels = zip(*batches)
    reference = eval_transform(32, NORM, interpolation=interpolation)
    expected = torch.stack([reference(pool.load(i)) for i in (5, 0, 3)])
    torch.testing.assert_close(torch.cat(images), expected, rtol=0, atol=1e-6)
    assert torch.cat(labels).tolist() == [1, 0, 1]


def test_a_resolution_cap_keeps_the_box_in_original_coordinates(pool, tmp_path):
    spec = ImageSpec(32, None, 256 / 224)
    capped = device_batches(pool, spec, [1], {0: 0, 1: 1}, 1, train=True, device=torch.device("cpu"),
                            generator=torch.Generator().manual_seed(0), cache_dir=str(tmp_path / "c"), max_side=60)
    native = device_batches(pool, spec, [1], {0: 0, 1: 1}, 1, train=True, device=torch.device("cpu"),
                            generator=torch.Generator().manual_seed(0), cache_dir=str(tmp_path / "c"))
    a, b = next(iter(capped))[0], next(iter(native))[0]
    assert a.shape == b.shape == (1, 3, 32, 32)
    assert (a - b).abs().mean() < 0.1  # same region, at half the resolution
