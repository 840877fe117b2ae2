"""Joint-training upper bound: one session over the data of every task.

Same branch structure and parameter budget as InfLoRA (a designed down-projection
from the covariance of all the data, trained ``up``), every head trained at once
with the cross-entropy over all classes. Nothing is learned sequentially, so no
forgetting is possible: this bounds what the sequential methods can reach.
"""

from __future__ import annotations

import torch

from ..net import ContinualViT
from ..subspace import design_down_projection
from ..training import Batches, collect_covariances
from .base import ContinualMethod, Design, MemoryBank
from .registry import register_method


@register_method
class Joint(ContinualMethod):
    """All tasks in a single session."""

    name = "joint"

    def sessions(self, num_tasks: int) -> list[list[int]]:
        return [list(range(num_tasks))]

    def branch_name(self, session: int) -> str:
        return "joint"

    def design(
        self,
        net: ContinualViT,
        session: int,
        batches: Batches,
        memory: MemoryBank | None,
        device: torch.device,
        generator: torch.Generator,
    ) -> Design:
        covs = collect_covariances(net, batches, device)
        downs = {
            layer: (design_down_projection(cov, None, self.lora.rank) * self.lora.down_scale).float()
            for layer, cov in covs.items()
        }
        return Design(downs)
