"""InfLoRA: interference-free low-rank adaptation (Liang & Li, CVPR 2024).

Follows ``liangyanshuo/InfLoRA``, ``methods/inflora.py`` (``InfLoRA._train``:
the design of ``lora_A`` before training, ``update_DualGPM`` after it) and
``models/vit_inflora.py`` (``Attention_LoRA``: branches on k and v).

Per task t: the down-projection ``B_t`` of a new branch is designed as the top-r
left singular vectors of the task's input covariance projected off the old-task
memory, ``(I − P) C``; it is frozen and only ``A_t`` (``up``) and the task's head
are trained. After training, the DualGPM memory absorbs the task's input space
up to the energy threshold ε_t.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from torch import Tensor

from ..net import ContinualViT
from ..subspace import SubspaceMemory, design_down_projection, memory_bank_from_state, memory_bank_state, threshold_schedule
from ..training import collect_covariances
from .base import MemoryBank, Step
from .config.inflora import InfLoRAConfig
from .lora_family import LoRAMethod
from .registry import register_method
from .results import StepResult

if TYPE_CHECKING:
    from .context import StepContext

__all__ = ["InfLoRA", "InfLoRAConfig"]


@register_method
class InfLoRA(LoRAMethod):
    """One designed, frozen-down branch per task; DualGPM memory between tasks."""

    name = "inflora"
    config_class = InfLoRAConfig
    config: InfLoRAConfig

    def branch_name(self, session: int) -> str:
        return f"task_{session:03d}"

    def steps(self) -> list[Step]:
        design, train, evaluate = super().steps()
        return [design, train, Step("update", needs=("train",), writes=("memory",), uploads=("memory",)), evaluate]

    def memory(self, ctx: "StepContext", session: int) -> MemoryBank | None:
        """Memory bank after ``session`` (``None`` before the first session)."""
        return None if session < 0 else memory_bank_from_state(ctx.load("memory", session))

    def design(self, net: ContinualViT, ctx: "StepContext") -> tuple[dict[str, Tensor], dict[str, float]]:
        covs = collect_covariances(net, ctx.train_batches(None), ctx.device)
        memory = self.memory(ctx, ctx.session - 1)
        downs, inside, free = {}, [], []
        for layer, cov in covs.items():
            layer_memory = memory.get(layer) if memory else None
            rows = design_down_projection(cov, layer_memory, self.config.rank)
            downs[layer] = (rows * self.config.down_scale).float()
            if layer_memory is not None:
                inside.append(layer_memory.energy_captured(cov))
                free.append(layer_memory.dim - layer_memory.rank)
        info = {}
        if inside:
            info["design/energy_in_memory_mean"] = statistics.fmean(inside)
            info["design/free_dim_min"] = float(min(free))
        return downs, info

    def step_update(self, ctx: "StepContext") -> StepResult:
        """DualGPM update after training (official ``update_DualGPM``)."""
        net = ctx.build_net(ctx.session + 1)
        covs = collect_covariances(net, ctx.train_batches(None), ctx.device)
        threshold = threshold_schedule(ctx.session, ctx.num_sessions, self.config.lamb, self.config.lame)
        bank: MemoryBank = dict(self.memory(ctx, ctx.session - 1) or {})
        info: dict[str, float] = {"memory/threshold": threshold}
        for layer, cov in covs.items():
            if layer not in bank:
                bank[layer] = SubspaceMemory(cov.shape[0], dual=self.config.dual_memory)
            bank[layer].update(cov, threshold)
            info[f"memory/rank/{layer}"] = float(bank[layer].rank)
        ranks = [m.rank for m in bank.values()]
        info["memory/rank_mean"] = statistics.fmean(ranks)
        info["memory/rank_max"] = float(max(ranks))
        ctx.save("memory", memory_bank_state(bank))
        return StepResult(metrics=info)
