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
from .config.dualprompt import DualPromptConfig
from .prompt_method import PromptMethod
from .registry import register_method

if TYPE_CHECKING:
    from .context import StepContext

__all__ = ["DualPrompt", "DualPromptConfig"]


@register_method
class DualPrompt(PromptMethod):
    """Shared G-prompts and one keyed E-prompt per task; the E-prompt is found by its key at test time."""

    name = "dualprompt"
    config_class = DualPromptConfig
    config: DualPromptConfig

    def make_prompts(self, embed_dim: int) -> PromptModule:
        c = self.config
        return DualPromptPool(embed_dim, c.pool_size, c.length, c.g_length, c.g_layers, c.e_layers, c.pull_weight)

    def configure(self, net: PromptedViT, ctx: "StepContext") -> None:
        """One E-prompt per task at least (official ``pool_size`` = number of tasks)."""
        if ctx.num_sessions > self.config.pool_size:
            raise ValueError(
                f"method.dualprompt.pool_size ({self.config.pool_size}) must be at least the number of tasks ({ctx.num_sessions})"
            )
