"""DualPrompt (Wang et al., ECCV 2022) as the InfLoRA repository runs it: G- and E-prompts, prefix tuning.

Choices and where they come from (``liangyanshuo/InfLoRA`` at ``e08b00e``; defaults
from ``GT-RIPL/CODA-Prompt``, since InfLoRA ships no config for its prompt methods;
see ``docs/prompt_methods.md``):

* prompt module: ``models/zoo.py`` ``DualPrompt`` (``_init_smart``: ``g_layers = [0, 1]``,
  ``e_layers = [2, 3, 4]``, ``top_k = 1``, ``task_id_bootstrap = True``) —
  :class:`~model.prompt_pools.DualPromptPool`: task ``t`` trains with E-prompt ``t``;
  a test forward picks, per E-layer, the E-prompt whose key best matches the query
  (``models/sinet_dual.py`` ``SiNet.interface`` calls the module with ``train=False``);
* 10 E-prompts of length 20, G-prompts of length 6: CODA-Prompt
  ``experiments/{imagenet-r,cifar-100}.sh`` ``--prompt_param 10 20 6``;
* trainable: G-prompts, the task's E-prompt and key and the task's head —
  ``methods/sprompt_dual.py`` ``_train`` trains every ``prompt_pool`` parameter,
  where the other E-prompts get no gradient (the same under Adam with weight decay 0);
* loss: ``sprompt_dual.py`` ``train_function``: ``cross_entropy + prompt_loss.sum()``
  (the key pull, weight ``pull_weight``, official 1), through
  :class:`~model.methods.prompt_method.PromptLossHooks`;
* optimizer: ``sprompt_dual.py`` ``_train``: Adam ``betas=(0.9, 0.999)``, lr 1e-3,
  weight decay 0, ``utils/schedulers.py`` ``CosineSchedule`` (CODA-Prompt
  ``configs/*_prompt.yaml``: ``schedule_type: cosine``) = ``train.scheduler: cosine``.
  **Not expressible exactly**: ``train_function`` steps the schedule with
  ``if epoch > 0: scheduler.step()``, so the official rate stays at lr for two epochs
  and every later epoch uses the factor of the epoch before (``CosineSchedule``'s
  first ``step()`` re-applies f(0)); ``train`` applies f(e) in epoch e.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..prompt_pools import DualPromptPool
from ..prompts import PromptedViT, PromptModule
from .config import MethodConfig, setting
from .prompt_config import Layers, OptionalLayers, PrefixLength
from .prompt_method import PromptMethod
from .published import sd_lora_paper
from .registry import register_method

if TYPE_CHECKING:
    from .context import StepContext

__all__ = ["DualPrompt", "DualPromptConfig"]


class DualPromptConfig(MethodConfig):
    """Settings of DualPrompt; defaults are the official ones."""

    pool_size: int = setting(10, "E-prompts (official 10 = the number of tasks; at least the number of tasks)", search=True, ge=1)
    length: PrefixLength = setting(20, "tokens per E-prompt, half keys and half values (official 20)", search=True, ge=2)
    g_length: PrefixLength = setting(6, "tokens per G-prompt, half keys and half values (official 6)", search=True, ge=2)
    g_layers: OptionalLayers = setting([0, 1], "blocks with G-prompts (official [0, 1])")
    e_layers: Layers = setting([2, 3, 4], "blocks with E-prompts (official [2, 3, 4])")
    pull_weight: float = setting(1.0, "weight of the task-key loss (official 1)", search=True, ge=0.0)


@register_method
class DualPrompt(PromptMethod):
    """Shared G-prompts and one keyed E-prompt per task; the E-prompt is found by its key at test time."""

    name = "dualprompt"
    config_class = DualPromptConfig
    config: DualPromptConfig
    # SD-LoRA's paper (Wu et al., ICLR 2025), Tables 2-3, on SD-LoRA's protocol; the InfLoRA paper's
    # Table 1 row is left out: no copy of that table could be checked from here.
    published = sd_lora_paper({
        ("imagenet_r", 5): ("69.99 ± 0.57", "72.24 ± 0.41"),
        ("imagenet_r", 10): ("68.22 ± 0.20", "73.81 ± 0.39"),
        ("imagenet_r", 20): ("65.23 ± 0.45", "71.30 ± 0.16"),
        ("imagenet_a", 10): ("45.49 ± 0.96", "54.68 ± 1.24"),
        ("domainnet", 5): ("68.26 ± 0.90", "73.84 ± 0.45"),
    })  # fmt: skip

    def make_prompts(self, embed_dim: int) -> PromptModule:
        c = self.config
        return DualPromptPool(embed_dim, c.pool_size, c.length, c.g_length, c.g_layers, c.e_layers, c.pull_weight)

    def configure(self, net: PromptedViT, ctx: "StepContext") -> None:
        """One E-prompt per task at least (official ``pool_size`` = number of tasks)."""
        if ctx.num_sessions > self.config.pool_size:
            raise ValueError(
                f"method.dualprompt.pool_size ({self.config.pool_size}) must be at least the number of tasks ({ctx.num_sessions})"
            )
