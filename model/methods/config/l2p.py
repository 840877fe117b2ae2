"""Settings of L2P (model code: :mod:`model.methods.l2p`)."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from ..published import sd_lora_paper
from .base import MethodConfig, declare_method, setting
from .prompt_fields import Layers

__all__ = ["L2PConfig"]


# SD-LoRA's paper (Wu et al., ICLR 2025), Tables 2-3, on SD-LoRA's protocol; the InfLoRA paper's
# Table 1 row is left out: no copy of that table could be checked from here.
PUBLISHED = sd_lora_paper({
    ("imagenet_r", 5): ("73.04 ± 0.71", "76.94 ± 0.41"),
    ("imagenet_r", 10): ("71.26 ± 0.44", "76.13 ± 0.46"),
    ("imagenet_r", 20): ("68.97 ± 0.51", "74.16 ± 0.32"),
    ("imagenet_a", 10): ("42.94 ± 1.27", "51.40 ± 1.95"),
    ("domainnet", 5): ("70.26 ± 0.25", "75.83 ± 0.98"),
})  # fmt: skip


@declare_method("l2p", published=PUBLISHED)
class L2PConfig(MethodConfig):
    """Settings of L2P; defaults are the official ones."""

    pool_size: int = setting(30, "prompts in the pool, per prompted block (official 30)", search=True, ge=1)
    length: int = setting(20, "tokens per prompt; prefix style: half keys, half values (official 20)", search=True, ge=2)
    top_k: int = setting(5, "prompts chosen per sample by key cosine (official 5)", search=True, ge=1)
    layers: Layers = setting([0], "prompted blocks (official shallow L2P: [0])")
    style: Literal["prefix", "prompt"] = setting("prefix", "'prefix' (InfLoRA/CODA-Prompt L2P++) or 'prompt' (original L2P input tokens)")
    pull_weight: float = setting(1.0, "weight of the key-pull loss (official 1)", search=True, ge=0.0)

    @model_validator(mode="after")
    def _consistent(self) -> "L2PConfig":
        if self.style == "prefix" and self.length % 2:
            raise ValueError(f"length must be an even integer >= 2 with style 'prefix' (half keys, half values), got {self.length}")
        if self.style == "prompt" and list(self.layers) != [0]:
            raise ValueError(f"layers must be [0] with style 'prompt' (tokens at the input), got {list(self.layers)}")
        if self.top_k > self.pool_size:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed pool_size ({self.pool_size})")
        return self
