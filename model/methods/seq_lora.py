"""Sequential LoRA baseline: the same branches without subspace design or memory.

One shared branch on the same k/v layers, with a random orthonormal (scaled)
down-projection, is trained on every task in turn; every task keeps its head.
Nothing protects old tasks, so this isolates what InfLoRA's design buys.
"""

from __future__ import annotations

import torch

from ..net import ContinualViT
from ..training import Batches
from .base import ContinualMethod, Design, MemoryBank
from .registry import register_method


@register_method
class SeqLoRA(ContinualMethod):
    """One shared LoRA branch, trained sequentially on every task."""

    name = "seq_lora"

    def branch_name(self, session: int) -> str:
        return "shared"

    def design(
        self,
        net: ContinualViT,
        session: int,
        batches: Batches,
        memory: MemoryBank | None,
        device: torch.device,
        generator: torch.Generator,
    ) -> Design:
        if session > 0:
            return Design()  # keep training the shared branch
        return Design(self.random_downs(net, generator))
