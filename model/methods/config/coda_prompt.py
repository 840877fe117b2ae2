"""Settings of CODA-Prompt (model code: :mod:`model.methods.coda_prompt`)."""

from __future__ import annotations

from ..published import sd_lora_paper
from .base import MethodConfig, declare_method, setting
from .prompt_fields import Layers, PrefixLength

__all__ = ["CodaPromptConfig"]


# SD-LoRA's paper (Wu et al., ICLR 2025), Tables 2-3, on SD-LoRA's protocol; the InfLoRA paper's
# Table 1 row is left out: no copy of that table could be checked from here.
PUBLISHED = sd_lora_paper({
    ("imagenet_r", 5): ("76.63 ± 0.27", "80.30 ± 0.28"),
    ("imagenet_r", 10): ("74.05 ± 0.41", "78.14 ± 0.39"),
    ("imagenet_r", 20): ("69.38 ± 0.33", "73.95 ± 0.63"),
    ("imagenet_a", 10): ("45.36 ± 0.78", "57.03 ± 0.94"),
    ("domainnet", 5): ("70.58 ± 0.53", "76.68 ± 0.44"),
})  # fmt: skip


@declare_method("coda_prompt", published=PUBLISHED)
class CodaPromptConfig(MethodConfig):
    """Settings of CODA-Prompt; defaults are the official ones."""

    pool_size: int = setting(
        100, "prompt components in all, split evenly over the tasks; at most the embedding width (official 100)", search=True, ge=1
    )
    length: PrefixLength = setting(8, "tokens per component, half keys and half values (official 8)", search=True, ge=2)
    layers: Layers = setting([0, 1, 2, 3, 4], "prompted blocks (official [0, 1, 2, 3, 4])")
    ortho_mu: float = setting(0.0, "weight of the orthogonality penalty (official 0.0; InfLoRA never adds it)", search=True, ge=0.0)
