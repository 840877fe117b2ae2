"""Settings of InfLoRA (model code: :mod:`model.methods.inflora`)."""

from __future__ import annotations

from pydantic import ValidationInfo, field_validator

from ..published import INFLORA_PAPER, PublishedFigure, sd_lora_paper
from .base import THRESHOLD, ScaledLoRAConfig, declare_method, setting

__all__ = ["InfLoRAConfig"]


# Liang & Li, CVPR 2024, Tables 1-3 (ViT-B/16 in21k, mean ± std over 5 seeds), on its own protocol
# (configs/paper/<cell>.yaml); then InfLoRA as SD-LoRA's paper reports it, on SD-LoRA's protocol.
PUBLISHED = (
    PublishedFigure("imagenet_r", 10, "75.65 ± 0.14", "80.82 ± 0.24", INFLORA_PAPER, protocol="imagenet_r_10"),
    PublishedFigure("imagenet_r", 5, "77.52 ± 0.37", "82.01 ± 0.12", INFLORA_PAPER, protocol="imagenet_r_5"),
    PublishedFigure("imagenet_r", 20, "71.01 ± 0.45", "77.28 ± 0.45", INFLORA_PAPER, protocol="imagenet_r_20"),
    PublishedFigure("cifar100", 10, "86.51 ± 0.73", "91.70 ± 0.32", INFLORA_PAPER, protocol="cifar100_10"),
    PublishedFigure("domainnet", 5, "74.53 ± 0.23", "79.57 ± 0.57", INFLORA_PAPER, protocol="domainnet_5"),
) + sd_lora_paper({
    ("imagenet_r", 5): ("76.95 ± 0.23", "81.81 ± 0.14"),
    ("imagenet_r", 10): ("74.75 ± 0.64", "80.67 ± 0.55"),
    ("imagenet_r", 20): ("69.89 ± 0.56", "76.68 ± 0.57"),
    ("imagenet_a", 10): ("49.20 ± 1.12", "60.92 ± 0.61"),
    ("domainnet", 5): ("71.59 ± 0.23", "78.29 ± 0.50"),
})  # fmt: skip


@declare_method("inflora", published=PUBLISHED)
class InfLoRAConfig(ScaledLoRAConfig):
    """Settings of InfLoRA: its LoRA branches and its memory."""

    lamb: float = setting(0.95, "memory threshold after the first task (paper: 0.95 CIFAR-100, 0.98 ImageNet-R)", search=True, **THRESHOLD)
    lame: float = setting(1.0, "threshold the schedule moves towards (paper: 1.0)", search=True, **THRESHOLD)
    dual_memory: bool = setting(True, "DualGPM (store the complement past d/2); false is plain GPM (b5 variant)")

    @field_validator("lame")
    @classmethod
    def _rises(cls, lame: float, info: ValidationInfo) -> float:
        lamb = info.data.get("lamb")
        if lamb is not None and lame < lamb:
            raise ValueError(f"must be >= lamb ({lamb}), got {lame}: the threshold schedule rises from lamb to lame")
        return lame
