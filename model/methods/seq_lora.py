"""Sequential LoRA baseline: the same branches without subspace design or memory.

One shared branch on the same k/v layers, with a random orthonormal (scaled)
down-projection, is trained on every task in turn; every task keeps its head.
Nothing protects old tasks, so this isolates what InfLoRA's design buys. (No
official counterpart: the InfLoRA repository's ``methods/`` has no plain LoRA.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from ..net import ContinualViT
from .config.seq_lora import SeqLoRAConfig
from .lora_family import LoRAMethod
from .registry import register_method

if TYPE_CHECKING:
    from .context import StepContext


@register_method
class SeqLoRA(LoRAMethod):
    """One shared LoRA branch, trained sequentially on every task."""

    name = "seq_lora"
    config_class = SeqLoRAConfig
    config: SeqLoRAConfig

    @property
    def train_down(self) -> bool:
        return self.config.train_down

    def branch_name(self, session: int) -> str:
        return "shared"

    def design(self, net: ContinualViT, ctx: "StepContext") -> tuple[dict[str, Tensor], dict[str, float]]:
        if ctx.session > 0:
            return {}, {}  # keep training the shared branch
        return self.random_downs(net, ctx.generator("design")), {}
