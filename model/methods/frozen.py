"""Frozen-backbone control: per-task heads on the pretrained features, nothing adapted.

The backbone stays as pretrained and each task trains only its own linear head
(as InfLoRA's heads are trained); prediction is the argmax over all seen heads.
It measures what the heads alone reach, i.e. how much any adaptation adds on top
(a standard control of class-incremental tables, e.g. the "linear probe" rows
of the PEFT continual-learning literature; no official InfLoRA counterpart).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from ..net import ContinualViT
from .base import ContinualMethod, head_name
from .config.frozen import FrozenConfig
from .registry import register_method

if TYPE_CHECKING:
    from .context import StepContext


@register_method
class Frozen(ContinualMethod):
    """Only the task heads train; no block is wrapped."""

    name = "frozen"
    config_class = FrozenConfig

    def begin_session(self, net: ContinualViT, ctx: "StepContext") -> list[nn.Parameter]:
        net.freeze_all()
        return self.add_session_heads(net, ctx)

    def trained_state(self, net: ContinualViT, ctx: "StepContext") -> dict[str, Tensor]:
        return net.adapter_state([], [head_name(t) for t in ctx.tasks])
