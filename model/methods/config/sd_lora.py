"""Settings of SD-LoRA (model code: :mod:`model.methods.sd_lora`)."""

from __future__ import annotations

from ..published import SD_LORA_PROTOCOL, PublishedFigure, sd_lora_paper
from .base import LoRAConfig, Targets, declare_method, setting

__all__ = ["SDLoRAConfig"]


# Wu et al., ICLR 2025, Tables 2-3: SD-LoRA's own protocol (configs/paper/<cell>_sd_lora_official.yaml:
# ViT-B/16 in21k fine-tuned on in1k, classes shuffled with seed 1995, its train/test folders).
PUBLISHED = sd_lora_paper({
    ("imagenet_r", 5): ("79.15 ± 0.20", "83.01 ± 0.42"),
    ("imagenet_r", 10): ("77.34 ± 0.35", "82.04 ± 0.24"),
    ("imagenet_r", 20): ("75.26 ± 0.37", "80.22 ± 0.72"),
    ("imagenet_a", 10): ("55.96 ± 0.73", "64.95 ± 1.63"),
    ("domainnet", 5): ("72.82 ± 0.37", "78.89 ± 0.50"),
}) + (
    # CIFAR-100 is not in the README's table images; declared before and not re-checked here
    PublishedFigure("cifar100", 10, "88.01", "92.54", "Wu et al., ICLR 2025 (SD-LoRA), CIFAR-100 row (not re-checked)",
                    protocol=f"cifar100_10_{SD_LORA_PROTOCOL}"),
)  # fmt: skip


@declare_method("sd_lora", published=PUBLISHED)
class SDLoRAConfig(LoRAConfig):
    """Settings of SD-LoRA: its branches (no designed down-projection, so no scale) and magnitudes."""

    targets: Targets = setting(("q", "v"), "rows of qkv the branches adapt (official: q and v)")
    magnitude_init: float = setting(0.8, "initial magnitude of every branch (official 0.8)", search=True, gt=0.0)
    magnitude_carry: bool = setting(False, "keep old magnitudes across tasks (official: they restart at magnitude_init)")
