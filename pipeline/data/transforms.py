"""Image transforms and normalisation shared by the image data sets.

The transforms follow the reference implementation (``utils/data.py`` of
liangyanshuo/InfLoRA), with 224 replaced by ``data.image_size``:

* training (:func:`train_transform`): ``RandomResizedCrop(image_size)`` + ``RandomHorizontalFlip()`` + ``ToTensor()``;
* test (:func:`eval_transform`; also the validation pool): ``Resize(round(image_size * 256 / 224))``
  + ``CenterCrop(image_size)`` + ``ToTensor()``
  (CIFAR-100 uses ratio 1: the reference resizes its 32×32 images straight to 224);
* then ``Normalize(mean, std)`` when a normalisation is given (``data.normalization``).

Random transforms draw from torch's global generator; the pipeline's stages run
inside a seeded :func:`torch.random.fork_rng`, so nothing is seeded here.

Image data sets share three options: ``data.options.channels``: ``3`` (RGB, the
default) or ``1`` (grayscale, PIL ``convert("L")``) for single-channel backbones;
``data.options.crop_scale``: the ``RandomResizedCrop`` scale range (default
torchvision's ``[0.08, 1.0]``; SD-LoRA's ``utils/data.py`` ``build_transform`` uses
``[0.05, 1.0]``); ``data.options.test_interpolation``: ``bilinear`` (default) or
``bicubic`` for the test resize (SD-LoRA's ``Resize(size, interpolation=3)``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .base import DatasetError, Normalization

__all__ = [
    "IMAGENET_MEAN_STD",
    "TEST_RESIZE_RATIO",
    "resolve_normalization",
    "train_transform",
    "eval_transform",
    "image_mode",
    "check_options",
    "channel_normalization",
    "crop_scale",
    "resize_interpolation",
    "eval_resize",
]

DEFAULT_CROP_SCALE = (0.08, 1.0)
"""torchvision's ``RandomResizedCrop`` default (the InfLoRA reference's)."""

_INTERPOLATIONS = ("bilinear", "bicubic")

IMAGENET_MEAN_STD: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

TEST_RESIZE_RATIO = 256 / 224
"""Test-time resize before the centre crop: ``Resize(256)`` + ``CenterCrop(224)`` scaled."""

IMAGE_OPTIONS = ("channels", "crop_scale", "test_interpolation")
"""``data.options`` keys every image data set accepts."""

_MODES = {1: "L", 3: "RGB"}

if TYPE_CHECKING:
    from torchvision.transforms import Compose


@functools.lru_cache(maxsize=16)
def resolve_normalization(mode: str, backbone_name: str) -> Normalization:
    """``(mean, std)`` for ``data.normalization``.

    Args:
        mode: ``"backbone"`` (the timm ``pretrained_cfg`` of ``backbone_name``;
            none when timm has no pretrained config for it), ``"imagenet"``, or
            ``"none"`` (images stay in [0, 1], as the reference code feeds its
            in21k ViT).
        backbone_name: timm model name, with or without a pretrained tag.
    """
    if mode == "none":
        return None
    if mode == "imagenet":
        return IMAGENET_MEAN_STD
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(backbone_name)
    except Exception:  # unknown tag: no pretrained config to follow
        cfg = None
    if cfg is None or cfg.mean is None or cfg.std is None:
        return None
    return tuple(float(m) for m in cfg.mean), tuple(float(s) for s in cfg.std)


def check_options(name: str, options: Mapping[str, Any], allowed: Iterable[str] = ()) -> None:
    """Reject ``data.options`` keys that data set ``name`` does not read.

    Raises:
        DatasetError: an unknown key; the message lists the allowed ones.
    """
    known = sorted(set(IMAGE_OPTIONS) | set(allowed))
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DatasetError(f"data.options: unknown key(s) {unknown} for data set {name!r}; allowed: {known}")


def image_mode(options: Mapping[str, Any]) -> str:
    """PIL mode for ``data.options.channels``: ``"RGB"`` (3, default) or ``"L"`` (1).

    Raises:
        DatasetError: ``channels`` is not 1 or 3.
    """
    channels = options.get("channels", 3)
    if isinstance(channels, bool) or channels not in _MODES:
        raise DatasetError(f"data.options.channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return _MODES[channels]


def crop_scale(options: Mapping[str, Any]) -> tuple[float, float]:
    """``data.options.crop_scale`` as ``(low, high)``, the share of the image a training crop covers.

    Raises:
        DatasetError: not two numbers with ``0 < low <= high <= 1``.
    """
    value = options.get("crop_scale", DEFAULT_CROP_SCALE)
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise DatasetError(f"data.options.crop_scale must be two numbers [low, high], got {value!r}") from None
    if not 0.0 < low <= high <= 1.0:
        raise DatasetError(f"data.options.crop_scale must satisfy 0 < low <= high <= 1, got {value!r}")
    return low, high


def resize_interpolation(options: Mapping[str, Any]) -> str:
    """``data.options.test_interpolation``: ``"bilinear"`` (default) or ``"bicubic"``.

    Raises:
        DatasetError: another value.
    """
    value = options.get("test_interpolation", "bilinear")
    if value not in _INTERPOLATIONS:
        raise DatasetError(f"data.options.test_interpolation must be one of {list(_INTERPOLATIONS)}, got {value!r}")
    return value


def channel_normalization(normalization: Normalization, channels: int) -> Normalization:
    """Fit a per-channel ``(mean, std)`` to ``channels`` image channels.

    A 3-channel normalisation applied to grayscale images uses the mean of its
    means and of its stds (timm configs list RGB values even for backbones built
    with ``in_chans=1``).

    Raises:
        DatasetError: the number of values fits neither 1 nor ``channels``.
    """
    if normalization is None:
        return None
    mean, std = (tuple(float(v) for v in values) for values in normalization)
    if len(mean) != len(std):
        raise DatasetError(f"normalisation mean {mean} and std {std} differ in length")
    if len(mean) == channels:
        return mean, std
    if len(mean) == 1:
        return mean * channels, std * channels
    if channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    raise DatasetError(f"a {len(mean)}-channel normalisation {normalization} does not fit {channels}-channel images")


def _transforms():
    # torchvision costs a second to import: only image data sets pay for it.
    from torchvision import transforms

    return transforms


def _finish(steps: list[Callable], normalization: Normalization) -> Compose:
    T = _transforms()
    steps.append(T.ToTensor())
    if normalization is not None:
        steps.append(T.Normalize(*normalization))
    return T.Compose(steps)


def train_transform(image_size: int, normalization: Normalization = None, scale: tuple[float, float] = DEFAULT_CROP_SCALE) -> Compose:
    """Training transform of a PIL image: random resized crop, horizontal flip, tensor in [0, 1], normalise.

    Args:
        image_size: side of the square output.
        normalization: ``(mean, std)`` with one value per output channel, or ``None``.
        scale: the crop's share of the image (``data.options.crop_scale``).

    Returns:
        A callable mapping a PIL image to a float tensor ``(C, image_size, image_size)``.
    """
    T = _transforms()
    return _finish([T.RandomResizedCrop(image_size, scale=scale), T.RandomHorizontalFlip()], normalization)


def eval_transform(
    image_size: int, normalization: Normalization = None, resize_ratio: float = TEST_RESIZE_RATIO, interpolation: str = "bilinear"
) -> Compose:
    """Test-time transform of a PIL image: resize the short side, centre crop, tensor in [0, 1], normalise.

    Args:
        image_size: side of the square output.
        normalization: ``(mean, std)`` with one value per output channel, or ``None``.
        resize_ratio: short side before the crop, as a multiple of ``image_size``
            (256/224 by default; 1 resizes without cropping square images).
        interpolation: of the resize, ``"bilinear"`` or ``"bicubic"`` (``data.options.test_interpolation``).

    Returns:
        A callable mapping a PIL image to a float tensor ``(C, image_size, image_size)``.
    """
    return _finish(list(eval_resize(image_size, resize_ratio, interpolation).transforms), normalization)


def eval_resize(image_size: int, resize_ratio: float = TEST_RESIZE_RATIO, interpolation: str = "bilinear") -> Compose:
    """The PIL-to-PIL part of :func:`eval_transform`: resize the short side, centre crop.

    The device path (:mod:`pipeline.data.decoded`) applies it once per image and keeps the result.
    """
    T = _transforms()
    resize = max(image_size, int(round(image_size * resize_ratio)))
    mode = T.InterpolationMode(interpolation)
    return T.Compose([T.Resize(resize, interpolation=mode), T.CenterCrop(image_size)])
