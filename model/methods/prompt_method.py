"""What L2P, DualPrompt and CODA-Prompt share as continual methods.

The three official learners (``liangyanshuo/InfLoRA`` ``methods/sprompt_{l2p,dual,coda}.py``)
run the same loop around different prompt modules (``models/zoo.py``):

* the backbone stays frozen; what trains in task ``t`` is the pool's task
  parameters and the task's head (``_train``: ``requires_grad`` set for names
  containing ``prompt_pool`` and ``classifier_pool.{t}``);
* the loss is the cross-entropy over the current task's head plus, where the
  official learner adds it, the pool's surrogate loss (:meth:`PromptMethod.adds_aux_loss`);
* the prediction is the argmax over every seen head of the prompted features.

Here a session's ``adapter`` slot holds the whole prompt state (``prompt.*``,
old components included, so the latest slot restores the pool) and the
session's heads (``head.*``); :meth:`PromptMethod.restore` loads every earlier
slot in order and sets the current task. Initial values are drawn from the
session's ``prompts`` generator, so a run is reproducible from its seed and a
resumed session re-creates exactly what the interrupted one started from.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..net import ContinualViT
from ..prompts import PromptedViT, PromptModule
from ..training import TrainingHooks
from .base import ContinualMethod, head_name

if TYPE_CHECKING:
    from .context import StepContext

__all__ = ["PromptMethod", "PromptLossHooks", "embed_dim_of"]


def embed_dim_of(backbone: nn.Module) -> int:
    """Width ``D`` of a timm ViT (its ``embed_dim``, else its ``num_features``)."""
    return int(getattr(backbone, "embed_dim", None) or getattr(backbone, "num_features"))


class PromptLossHooks(TrainingHooks):
    """Adds the prompt module's surrogate loss of the batch (``PromptedViT.aux_loss``) to the CE."""

    def extra_loss(self, net: nn.Module, logits: Tensor, targets: Tensor) -> Tensor | None:
        assert isinstance(net, PromptedViT)
        return net.aux_loss()


class PromptMethod(ContinualMethod):
    """A frozen ViT with a method's prompt module and per-task heads; no LoRA branch."""

    adds_aux_loss: bool = True
    """Whether the official learner adds the pool's surrogate loss to the CE."""
    draws_initial_pool: bool = True
    """Whether the pool's parameters exist from the start (U[0, 1) draws redone from
    the run's seed in session 0); CODA-Prompt creates its components per task instead."""

    @abstractmethod
    def make_prompts(self, embed_dim: int) -> PromptModule:
        """The method's prompt module for a backbone of width ``embed_dim``."""

    def build_net(self, backbone: nn.Module) -> PromptedViT:
        return PromptedViT(backbone, self.make_prompts(embed_dim_of(backbone)), self.lora_blocks())

    def configure(self, net: PromptedViT, ctx: "StepContext") -> None:
        """Settings that depend on the run (e.g. CODA-Prompt's split of its pool over the tasks)."""

    def restore(self, net: ContinualViT, ctx: "StepContext", sessions_done: int) -> None:
        """Load sessions ``0 .. sessions_done - 1`` (later slots win) and make the last one current."""
        assert isinstance(net, PromptedViT)
        self.configure(net, ctx)
        for s in range(sessions_done):
            net.load_adapter_state(ctx.load("adapter", s))
        net.task = sessions_done - 1 if sessions_done else None

    @staticmethod
    def session_task(ctx: "StepContext") -> int:
        if len(ctx.tasks) != 1:
            raise ValueError(f"prompt methods train one task per session, session {ctx.session} has tasks {ctx.tasks}")
        return ctx.tasks[0]

    def begin_session(self, net: ContinualViT, ctx: "StepContext") -> list[nn.Parameter]:
        assert isinstance(net, PromptedViT)
        net.freeze_all()
        generator = ctx.generator("prompts")
        if ctx.session == 0 and self.draws_initial_pool:
            with torch.no_grad():  # official tensor_prompt: nn.init.uniform_, here from the run's seed
                for p in net.prompts.parameters():
                    p.copy_(torch.rand(p.shape, generator=generator))
        params = net.begin_task(self.session_task(ctx), generator)
        return params + self.add_session_heads(net, ctx)

    def training_hooks(self, net: ContinualViT, ctx: "StepContext") -> TrainingHooks:
        return PromptLossHooks() if self.adds_aux_loss else TrainingHooks()

    def trained_state(self, net: ContinualViT, ctx: "StepContext") -> dict[str, Tensor]:
        assert isinstance(net, PromptedViT)
        return net.prompt_state([head_name(t) for t in ctx.tasks])
