"""The image transforms of :mod:`pipeline.data.transforms`, applied to batches on the compute device.

The host only samples the crop boxes and flips and slices the decoded pixels
(:mod:`pipeline.data.decoded`); the resize, flip, conversion to [0, 1] and
normalisation run on the device as batched tensor operations, so that the host
CPU per training image stays far below the PIL path's (README, "Benchmarks").

Fidelity to the PIL path (``tests/pipeline/data/test_data_batch_transforms.py``):

* the crop boxes are torchvision's ``RandomResizedCrop.get_params`` (scale
  (0.08, 1) or ``data.options.crop_scale``, ratio (3/4, 4/3), on the original image size), the same draws in
  the same order from an explicit generator, followed by the flip's draw as in
  ``Compose([RandomResizedCrop, RandomHorizontalFlip])``: seeded alike, both
  paths pick identical boxes and flips;
* the resize is ``torch.nn.functional.interpolate(mode="bilinear",
  antialias=True)`` (torchvision's tensor resize, written to match PIL's
  bilinear filter), rounded to 8-bit levels as PIL's output is; it differs from
  PIL by at most a few 8-bit levels per pixel (the test states its tolerance);
* the test-time resize (bilinear or ``data.options.test_interpolation``) and centre crop are PIL's own, done once when the cache
  is built, so evaluation inputs are bit-identical to the PIL path's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Normalization

__all__ = ["CROP_SCALE", "CROP_RATIO", "CropBox", "sample_crop", "sample_crops", "resized_crops", "to_float", "derive_seed"]

CROP_SCALE = (0.08, 1.0)
"""``RandomResizedCrop``'s default area range, as the reference uses it."""

CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
"""``RandomResizedCrop``'s default aspect-ratio range."""

CropBox = tuple[int, int, int, int, bool]
"""``(top, left, height, width, flip)`` in the original image's pixels."""

_MASK63 = (1 << 63) - 1


def derive_seed(base: int, index: int) -> int:
    """A 63-bit seed for batch ``index`` of an epoch whose seed is ``base`` (SplitMix64 finaliser)."""
    z = (base * 0x9E3779B97F4A7C15 + index + 1) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK63


def sample_crop(height: int, width: int, generator: torch.Generator, scale: tuple[float, float] = CROP_SCALE) -> CropBox:
    """One crop box and flip, drawn as ``RandomResizedCrop(scale=scale).get_params`` + ``RandomHorizontalFlip()`` draw them.

    The body is torchvision's ``RandomResizedCrop.get_params`` (``transforms.py``)
    with ``generator`` in place of the global generator, then the flip's
    ``torch.rand(1) < 0.5``.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(CROP_RATIO))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            j = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            break
    else:  # torchvision's fallback: the central crop at the nearest allowed ratio
        in_ratio = float(width) / float(height)
        if in_ratio < min(CROP_RATIO):
            w, h = width, int(round(width / min(CROP_RATIO)))
        elif in_ratio > max(CROP_RATIO):
            h, w = height, int(round(height * max(CROP_RATIO)))
        else:
            w, h = width, height
        i, j = (height - h) // 2, (width - w) // 2
    flip = bool(torch.rand(1, generator=generator).item() < 0.5)
    return i, j, h, w, flip


def sample_crops(sizes: Sequence[tuple[int, int]], seed: int, scale: tuple[float, float] = CROP_SCALE) -> list[CropBox]:
    """Crop boxes of a batch of images of original ``(height, width)`` sizes, from one seed."""
    generator = torch.Generator().manual_seed(seed)
    return [sample_crop(h, w, generator, scale) for h, w in sizes]


def to_float(images: Tensor, normalization: Normalization) -> Tensor:
    """uint8 ``(B, C, H, W)`` → float in [0, 1] (``ToTensor``), then ``Normalize`` when given."""
    x = images.float().div_(255.0)
    if normalization is not None:
        mean = torch.tensor(normalization[0], device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(normalization[1], device=x.device).view(1, -1, 1, 1)
        x = x.sub_(mean).div_(std)
    return x


def resized_crops(crops: Sequence[Tensor], flips: Sequence[bool], size: int) -> Tensor:
    """Resize each uint8 crop ``(C, h, w)`` to ``(C, size, size)``, flip where asked; uint8 ``(B, C, size, size)``.

    Bilinear with antialiasing, rounded to 8-bit levels like PIL's resize output.
    """
    out = []
    for crop, flip in zip(crops, flips):
        x = crop.unsqueeze(0).float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if flip:
            x = x.flip(-1)
        out.append(x)
    return torch.cat(out).round_().clamp_(0, 255).to(torch.uint8)
