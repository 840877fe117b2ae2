"""What the LoRA-branch methods share: a branch per session, designed (or drawn)
before training, trained with the session's heads, probed for interference.

InfLoRA, InfLoRA+CA, sequential LoRA and joint training subclass
:class:`LoRAMethod`; SD-LoRA builds its own branches and only reuses the probe.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from ..lora import BranchChange
from ..net import ContinualViT
from ..training import probe_sq_norm
from .base import ContinualMethod, Step, head_name
from .config import BlocksSpec, ScaledLoRAConfig
from .results import StepResult

if TYPE_CHECKING:
    from .context import StepContext

__all__ = ["LoRAMethod", "interference_ratio"]


class LoRAMethod(ContinualMethod):
    """A LoRA branch per session (or one shared branch) on ``targets`` of the wrapped ``qkv``."""

    targets: ClassVar[tuple[str, ...]] = ("k", "v")
    config: ScaledLoRAConfig

    def lora_blocks(self) -> BlocksSpec:
        return self.config.blocks

    @property
    def train_down(self) -> bool:
        """Whether the down-projection trains too (plain LoRA); InfLoRA keeps it frozen."""
        return False

    def load_trained_state(self, net: ContinualViT, state: dict[str, Tensor]) -> None:
        net.load_adapter_state(state, self.train_down)

    @abstractmethod
    def branch_name(self, session: int) -> str:
        """Name of the branch that session ``session`` trains."""

    @abstractmethod
    def design(self, net: ContinualViT, ctx: "StepContext") -> tuple[dict[str, Tensor], dict[str, float]]:
        """Down-projections of the session's new branch (empty if it adds none) and diagnostics."""

    def steps(self) -> list[Step]:
        return [
            Step("design", writes=("design",)),
            Step("train", needs=("design",), writes=("adapter",), uploads=("adapter",)),
            Step("eval", needs=("train",), ordered=True, carries_state=False),
        ]

    def step_design(self, ctx: "StepContext") -> StepResult:
        net = ctx.build_net(ctx.session)
        downs, info = self.design(net, ctx)
        ctx.save("design", downs)
        return StepResult(metrics=info, info={"new_branch": bool(downs)})

    def begin_session(self, net: ContinualViT, ctx: "StepContext") -> list[nn.Parameter]:
        """Add the designed branch and the session's heads; everything else stays frozen."""
        net.freeze_all()
        name = self.branch_name(ctx.session)
        downs = ctx.load("design")
        if downs:
            net.add_branches(name, downs, train_down=self.train_down, targets=self.targets)
        params = net.set_branch_trainable(name, True)
        return params + self.add_session_heads(net, ctx)

    def trained_state(self, net: ContinualViT, ctx: "StepContext") -> dict[str, Tensor]:
        return net.adapter_state(self.trained_branches([ctx.session]), [head_name(t) for t in ctx.tasks])

    def trained_branches(self, sessions: Sequence[int]) -> list[str]:
        """Distinct branch names trained in the given sessions, in order."""
        return list(dict.fromkeys(self.branch_name(s) for s in sessions))

    def random_downs(self, net: ContinualViT, generator: torch.Generator) -> dict[str, Tensor]:
        """Random orthonormal rows (scaled like a designed branch) for baselines."""
        downs = {}
        for name, layer in net.lora_layers.items():
            gaussian = torch.randn(layer.in_features, self.config.rank, generator=generator, dtype=torch.float64)
            q, _ = torch.linalg.qr(gaussian)
            downs[name] = (q.T * self.config.down_scale).float()
        return downs

    def eval_metrics(self, net: ContinualViT, ctx: "StepContext") -> dict[str, float]:
        if not ctx.previous_tasks():
            return {}
        before = None
        name = self.branch_name(ctx.session)
        earlier = [s for s in range(ctx.session) if self.branch_name(s) == name]
        if earlier:
            before = ctx.load("adapter", earlier[-1])
        return {"interference/ratio": interference_ratio(net, name, before, ctx)}


def interference_ratio(net: ContinualViT, branch: str, before: dict[str, Tensor] | None, ctx: "StepContext") -> float:
    """RMS output of the session's change of ``branch`` on old tasks' test inputs over that on its own.

    ``before`` is the adapter state holding the branch as it was before the
    session (a shared branch trained earlier), ``None`` for a new branch.
    """
    probes: dict[str, nn.Module] = {}
    for layer_name, layer in net.lora_layers.items():
        old = None
        if before is not None:
            prefix = f"lora.{layer_name}.{branch}."
            tensors = {k[len(prefix):]: v for k, v in before.items() if k.startswith(prefix)}
            old = net.make_branch(layer, tensors)
            old.load_state_dict(tensors)
        probes[layer_name] = BranchChange(layer.branches[branch], old)
    new_sq = sum(probe_sq_norm(net, probes, ctx.eval_batches(t, "test"), ctx.device) for t in ctx.tasks) / len(ctx.tasks)
    old_tasks = ctx.previous_tasks()
    old_sq = sum(probe_sq_norm(net, probes, ctx.eval_batches(t, "test"), ctx.device) for t in old_tasks) / len(old_tasks)
    return math.sqrt(old_sq / new_sq) if new_sq > 0 else math.nan
