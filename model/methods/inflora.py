"""InfLoRA: interference-free low-rank adaptation (Liang & Li, CVPR 2024).

Per task t: the down-projection ``B_t`` of a new branch is designed as the top-r
left singular vectors of the task's input covariance projected off the old-task
memory, ``(I − P) C``; it is frozen and only ``A_t`` (``up``) and the task's head
are trained. After training, the DualGPM memory absorbs the task's input space
up to the energy threshold ε_t.
"""

from __future__ import annotations

import statistics

import torch

from ..net import ContinualViT
from ..subspace import SubspaceMemory, design_down_projection, threshold_schedule
from ..training import Batches, collect_covariances
from .base import ContinualMethod, Design, MemoryBank
from .registry import register_method


@register_method
class InfLoRA(ContinualMethod):
    """One designed, frozen-down branch per task; DualGPM memory between tasks."""

    name = "inflora"
    uses_memory = True

    def branch_name(self, session: int) -> str:
        return f"task_{session:03d}"

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
        downs, inside, free = {}, [], []
        for layer, cov in covs.items():
            layer_memory = memory.get(layer) if memory else None
            rows = design_down_projection(cov, layer_memory, self.lora.rank)
            downs[layer] = (rows * self.lora.down_scale).float()
            if layer_memory is not None:
                inside.append(layer_memory.energy_captured(cov))
                free.append(layer_memory.dim - layer_memory.rank)
        info = {}
        if inside:
            info["design/energy_in_memory_mean"] = statistics.fmean(inside)
            info["design/free_dim_min"] = float(min(free))
        return Design(downs, info)

    def update_memory(
        self,
        net: ContinualViT,
        session: int,
        num_sessions: int,
        batches: Batches,
        memory: MemoryBank | None,
        device: torch.device,
    ) -> tuple[MemoryBank | None, dict[str, float]]:
        covs = collect_covariances(net, batches, device)
        threshold = threshold_schedule(session, num_sessions, self.spec.lamb, self.spec.lame)
        bank: MemoryBank = dict(memory or {})
        info: dict[str, float] = {"memory/threshold": threshold}
        for layer, cov in covs.items():
            if layer not in bank:
                bank[layer] = SubspaceMemory(cov.shape[0], dual=self.spec.dual_memory)
            bank[layer].update(cov, threshold)
            info[f"memory/rank/{layer}"] = float(bank[layer].rank)
        ranks = [m.rank for m in bank.values()]
        info["memory/rank_mean"] = statistics.fmean(ranks)
        info["memory/rank_max"] = float(max(ranks))
        return bank, info
