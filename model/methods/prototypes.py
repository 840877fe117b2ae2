"""Class-mean (prototype) classification, shared by LoRA⁻ and CL-LoRA.

Both official codes keep, after each task, the mean feature of each new class
over its training images (test transforms) under the network as it then stands,
never updated later, and predict the class of the most similar mean: LoRA⁻ by
the nearest normalised mean (``_eval_model``, NME), CL-LoRA by the cosine to
each task's means of the feature computed with that task's adapters
(``CosineLinearFeature.forward_diagonal``). The trained heads serve training only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..net import ContinualViT
from .base import ContinualMethod, Step, head_name
from .results import StepResult

if TYPE_CHECKING:
    from .context import StepContext

__all__ = ["PrototypeViT", "PrototypeSteps"]


class PrototypeViT(ContinualViT):
    """:class:`ContinualViT` that classifies by cosine to stored class means.

    Once every asked head has prototypes (``proto.task_003``, ``(classes, D)``) and
    ``classify_by_prototypes`` is set, the logits are the cosines between the
    task's feature (:meth:`task_features`) and its class means; their argmax is
    the nearest normalised mean. Otherwise (training) the heads are used.
    """

    def __init__(self, backbone: nn.Module, lora_blocks) -> None:
        super().__init__(backbone, lora_blocks)
        self.prototypes: dict[str, Tensor] = {}
        self.classify_by_prototypes = True

    def task_features(self, x: Tensor, head: str) -> Tensor:
        """The feature that ``head``'s prototypes are compared with (one feature for every task here)."""
        return self.features(x)

    def forward(self, x: Tensor, heads: list[str] | None = None) -> Tensor:
        keys = list(self.heads.heads) if heads is None else heads
        if not (self.classify_by_prototypes and all(k in self.prototypes for k in keys)):
            return super().forward(x, heads)
        shared: dict[str, Tensor] = {}
        logits = []
        for k in keys:
            if type(self).task_features is PrototypeViT.task_features:  # one pass serves every head
                f = shared.setdefault("f", F.normalize(self.features(x).float(), dim=-1))
            else:
                f = F.normalize(self.task_features(x, k).float(), dim=-1)
            logits.append(f @ F.normalize(self.prototypes[k].to(f.device), dim=-1).T)
        return torch.cat(logits, dim=-1)

    def load_extra_state(self, kind: str, key: str, value: Tensor) -> None:
        if kind != "proto":
            super().load_extra_state(kind, key, value)
        self.prototypes[key] = value.float()

    def old_prototypes(self) -> Tensor | None:
        """Every stored prototype, normalised, ``(classes, D)`` (``None`` before the first)."""
        if not self.prototypes:
            return None
        return F.normalize(torch.cat([self.prototypes[k] for k in sorted(self.prototypes)]), dim=-1)


class PrototypeSteps(ContinualMethod):
    """Mixin of the ``prototypes`` step (after ``train``) and the restore of every stored mean."""

    def with_prototype_step(self, steps: list[Step]) -> list[Step]:
        """``steps`` with ``prototypes`` after ``train``, and ``eval`` reading it."""
        out = [s for s in steps if s.name != "eval"]
        return out + [Step("prototypes", needs=("train",), writes=("prototypes",)),
                      Step("eval", needs=("prototypes",), ordered=True, carries_state=False)]

    def restore_prototypes(self, net: ContinualViT, ctx: "StepContext", sessions_done: int) -> None:
        for s in range(sessions_done):  # the prototypes step itself builds the net before its own exist
            if ctx.exists("prototypes", s):
                net.load_adapter_state(ctx.load("prototypes", s))

    def step_prototypes(self, ctx: "StepContext") -> StepResult:
        """Class means of the session's training images (test transforms) under the network just trained."""
        net = ctx.build_net(ctx.session + 1)
        assert isinstance(net, PrototypeViT)
        net.eval()
        state: dict[str, Tensor] = {}
        for task in ctx.tasks:
            head = head_name(task)
            offset, size = ctx.class_offset(task), ctx.head_sizes()[head]
            sums = torch.zeros(size, net.embed_dim, dtype=torch.float64)
            counts = torch.zeros(size, dtype=torch.float64)
            with torch.no_grad():
                for images, labels in ctx.measure_batches([task]):
                    features = net.task_features(images.to(ctx.device), head).double().cpu()
                    local = labels.cpu() - offset
                    sums.index_add_(0, local, features)
                    counts.index_add_(0, local, torch.ones_like(local, dtype=torch.float64))
            if (counts == 0).any():
                raise RuntimeError(f"{self.name} prototypes: a class of task {task} has no training image")
            state[f"proto.{head}"] = (sums / counts[:, None]).float()
        ctx.save("prototypes", state)
        return StepResult()
