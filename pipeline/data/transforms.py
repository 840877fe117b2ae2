"""Image normalisation resolved from the backbone, shared by the image data sets."""

from __future__ import annotations

import functools

from .base import Normalization

__all__ = ["IMAGENET_MEAN_STD", "resolve_normalization"]

IMAGENET_MEAN_STD: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


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
