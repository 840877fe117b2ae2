"""Settings of LoRA⁻ (model code: :mod:`model.methods.lora_minus`)."""

from __future__ import annotations

from ..published import PublishedFigure
from .base import THRESHOLD, LoRAConfig, declare_method, setting

__all__ = ["LoRAMinusConfig"]

_LIBCONTINUAL = "LoRA⁻ paper as reported in RL-VIG/LibContinual reproduce/lora_sub_drs/README.md"


# Liu & Chang, CVPR 2025, on InfLoRA's protocol (ViT-B/16 in21k, label order, the 80/20 ImageNet-R split:
# LoRA-Sub-DRS's utils/data.py is InfLoRA's). Read from RL-VIG/LibContinual reproduce/lora_sub_drs/README.md
# ("Reported Accuracy"), not from the paper's own table: marked secondary.
PUBLISHED = (
    PublishedFigure("imagenet_r", 10, "74.74", "80.35", _LIBCONTINUAL, protocol="imagenet_r_10", secondary=True),
    PublishedFigure("cifar100", 10, "89.14", "93.11", _LIBCONTINUAL, protocol="cifar100_10", secondary=True),
)


@declare_method("lora_minus", published=PUBLISHED)
class LoRAMinusConfig(LoRAConfig):
    """Settings of LoRA⁻: its branches (rank, blocks; no designed down-projection, so no scale) and its losses."""

    threshold: float = setting(0.99, "energy the drift-resistant space keeps (official 'thres' 0.99)", search=True, **THRESHOLD)
    triplet_weight: float = setting(0.2, "weight of the augmented triplet loss (official 'lambada': 0.2 ImageNet-R, 0.05 CIFAR-100)",
                                    search=True, ge=0.0)
    triplet_margin: float = setting(2.0, "margin of the augmented triplet loss (official 'margin_inter': 2.0 ImageNet-R, 1.0 CIFAR-100)",
                                    search=True, ge=0.0)
