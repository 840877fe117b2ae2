"""Settings of DualPrompt (model code: :mod:`model.methods.dualprompt`)."""

from __future__ import annotations

from ..published import sd_lora_paper
from .base import MethodConfig, declare_method, setting
from .prompt_fields import Layers, OptionalLayers, PrefixLength

__all__ = ["DualPromptConfig"]


# SD-LoRA's paper (Wu et al., ICLR 2025), Tables 2-3, on SD-LoRA's protocol; the InfLoRA paper's
# Table 1 row is left out: no copy of that table could be checked from here.
PUBLISHED = sd_lora_paper({
    ("imagenet_r", 5): ("69.99 ± 0.57", "72.24 ± 0.41"),
    ("imagenet_r", 10): ("68.22 ± 0.20", "73.81 ± 0.39"),
    ("imagenet_r", 20): ("65.23 ± 0.45", "71.30 ± 0.16"),
    ("imagenet_a", 10): ("45.49 ± 0.96", "54.68 ± 1.24"),
    ("domainnet", 5): ("68.26 ± 0.90", "73.84 ± 0.45"),
})  # fmt: skip


@declare_method("dualprompt", published=PUBLISHED)
class DualPromptConfig(MethodConfig):
    """Settings of DualPrompt; defaults are the official ones."""

    pool_size: int = setting(10, "E-prompts (official 10 = the number of tasks; at least the number of tasks)", search=True, ge=1)
    length: PrefixLength = setting(20, "tokens per E-prompt, half keys and half values (official 20)", search=True, ge=2)
    g_length: PrefixLength = setting(6, "tokens per G-prompt, half keys and half values (official 6)", search=True, ge=2)
    g_layers: OptionalLayers = setting([0, 1], "blocks with G-prompts (official [0, 1])")
    e_layers: Layers = setting([2, 3, 4], "blocks with E-prompts (official [2, 3, 4])")
    pull_weight: float = setting(1.0, "weight of the task-key loss (official 1)", search=True, ge=0.0)
