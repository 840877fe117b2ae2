"""CODA-Prompt (Smith et al., CVPR 2023) as the InfLoRA repository runs it: attention over prompt components.

Choices and where they come from (``liangyanshuo/InfLoRA`` at ``e08b00e``; defaults
from ``GT-RIPL/CODA-Prompt``, since InfLoRA ships no config for its prompt methods;
see ``docs/prompt_methods.md``):

* prompt module: ``models/zoo.py`` ``CodaPrompt`` (``e_layers = [0, 1, 2, 3, 4]``,
  ``pool_size / n_tasks`` components per task, ``process_task_count`` +
  ``gram_schmidt`` for each new task's components, old ones ``.detach()``-ed) —
  :class:`~model.prompt_pools.CodaPromptPool`; the pool is split over the run's
  number of sessions (official ``n_tasks``) when the network is restored;
* 100 components of length 8, ortho weight 0.0: CODA-Prompt
  ``experiments/{imagenet-r,cifar-100}.sh`` ``--prompt_param 100 8 0.0``;
* trainable: the task's components (``p``, ``k``, ``a``) and its head, ``methods/sprompt_coda.py``
  ``_train`` (``"prompt_pool" in name``; old rows are detached in ``CodaPrompt.forward``);
* loss: ``sprompt_coda.py`` ``train_function`` uses the cross-entropy only; CODA-Prompt's
  ``learners/prompt.py`` ``update_model`` adds ``ortho_mu · ortho_penalty(...)``. This
  module adds the pool's ``aux_loss()``, which is exactly zero at the official
  ``ortho_mu = 0`` (so equal to InfLoRA's loss) and follows CODA-Prompt when ``ortho_mu > 0``;
* optimizer: ``sprompt_coda.py`` ``_train``: Adam ``betas=(0.9, 0.999)``, lr 1e-3,
  weight decay 0, ``CosineSchedule`` (``train.scheduler: cosine``). **Not expressible
  exactly**: ``if epoch > 0: scheduler.step()`` delays the schedule by one epoch
  (``CosineSchedule``'s first ``step()`` re-applies f(0)); ``train`` applies f(e) in epoch e;
* test: ``models/sinet_coda.py`` ``SiNet.interface`` weights the components as in training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..prompt_pools import CodaPromptPool
from ..prompts import PromptedViT, PromptModule
from .config.coda_prompt import CodaPromptConfig
from .prompt_method import PromptMethod
from .registry import register_method

if TYPE_CHECKING:
    from .context import StepContext

__all__ = ["CodaPrompt", "CodaPromptConfig"]


@register_method
class CodaPrompt(PromptMethod):
    """Each task adds orthogonal components; a query-key attention weights all components seen so far."""

    name = "coda_prompt"
    config_class = CodaPromptConfig
    config: CodaPromptConfig
    draws_initial_pool = False  # components are drawn per task by Gram-Schmidt (begin_task)

    def make_prompts(self, embed_dim: int) -> PromptModule:
        c = self.config
        if c.pool_size > embed_dim:
            raise ValueError(f"method.coda_prompt.pool_size ({c.pool_size}) cannot exceed the embedding width {embed_dim} (orthogonal keys)")
        # one task until configure() learns the run's number of sessions
        return CodaPromptPool(embed_dim, 1, c.pool_size, c.length, c.ortho_mu, c.layers)

    def configure(self, net: PromptedViT, ctx: "StepContext") -> None:
        """Split the pool over the run's sessions (official ``n_tasks``)."""
        try:
            net.prompts.configure_tasks(ctx.num_sessions)  # type: ignore[operator]
        except ValueError as exc:
            raise ValueError(f"method.coda_prompt.pool_size: {exc}") from None
