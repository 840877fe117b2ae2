"""Joint-training upper bound: one session over the data of every task.

Same branch structure and parameter budget as InfLoRA (a designed down-projection
from the covariance of all the data, trained ``up``), every head trained at once
with the cross-entropy over all classes. Nothing is learned sequentially, so no
forgetting is possible: this bounds what the sequential methods can reach.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from ..net import ContinualViT
from ..subspace import design_down_projection
from ..training import collect_covariances
from .config.joint import JointConfig
from .lora_family import LoRAMethod
from .registry import register_method

if TYPE_CHECKING:
    from .context import StepContext


@register_method
class Joint(LoRAMethod):
    """All tasks in a single session."""

    name = "joint"
    config_class = JointConfig
    config: JointConfig

    def sessions(self, num_tasks: int) -> list[list[int]]:
        return [list(range(num_tasks))]

    def branch_name(self, session: int) -> str:
        return "joint"

    def design(self, net: ContinualViT, ctx: "StepContext") -> tuple[dict[str, Tensor], dict[str, float]]:
        covs = collect_covariances(net, ctx.train_batches(None), ctx.device)
        downs = {layer: (design_down_projection(cov, None, self.config.rank) * self.config.down_scale).float() for layer, cov in covs.items()}
        return downs, {}
