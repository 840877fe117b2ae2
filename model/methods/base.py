"""The interface every continual method implements, and its settings.

A run is a sequence of *sessions*; a session trains on one task (InfLoRA,
sequential LoRA) or on several at once (joint training). For each session the
pipeline calls, in order:

1. :meth:`ContinualMethod.design` — before training; returns the down-projections
   of a new branch (or none) computed from the session's training data;
2. :meth:`ContinualMethod.begin_session` — adds the branch and the heads and
   returns the parameters to train;
3. (the shared training loop of :mod:`model.training`);
4. :meth:`ContinualMethod.update_memory` — after training; updates the
   method's memory of old inputs (InfLoRA's DualGPM), if it has one.

Each call is a pure function of the network state and its arguments, so that the
pipeline can run them as separate, resumable stages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Union

import torch
from torch import Tensor, nn

from ..lora import REFERENCE_DOWN_SCALE
from ..net import ContinualViT
from ..subspace import SubspaceMemory
from ..training import Batches

__all__ = ["LoRASpec", "MethodSpec", "Design", "MemoryBank", "ContinualMethod", "head_name"]

MemoryBank = dict[str, SubspaceMemory]
"""Memory of every wrapped layer, keyed by layer name."""

BlocksSpec = Union[str, int, list[int]]


def head_name(task: int) -> str:
    """Key of task ``task``'s head (``"task_003"``)."""
    return f"task_{task:03d}"


@dataclass(frozen=True)
class LoRASpec:
    """Where the branches go and how large they are.

    Args:
        rank: rows ``r`` of each down-projection (paper: 10; DomainNet 30).
        blocks: ``"all"``, the first ``n`` blocks (b5 variant: ``5``) or a list of indices.
        down_scale: factor on the designed rows; the reference code's 1/√3.
    """

    rank: int = 10
    blocks: BlocksSpec = "all"
    down_scale: float = REFERENCE_DOWN_SCALE

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank must be an integer >= 1, got {self.rank!r}")
        if isinstance(self.blocks, str) and self.blocks != "all":
            raise ValueError(f"lora.blocks must be 'all', an int or a list of block indices, got {self.blocks!r}")
        if isinstance(self.blocks, int) and self.blocks < 1:
            raise ValueError(f"lora.blocks must be >= 1 when an int, got {self.blocks}")
        if not self.down_scale > 0:
            raise ValueError(f"lora.down_scale must be > 0, got {self.down_scale}")


@dataclass(frozen=True)
class MethodSpec:
    """Method name and its settings.

    Args:
        name: a registered method (``inflora``, ``seq_lora``, ``joint``…).
        lamb: memory threshold after the first task (paper: 0.95 CIFAR-100, 0.98 ImageNet-R).
        lame: threshold the schedule moves towards (paper: 1.0).
        dual_memory: DualGPM (store the complement past d/2); ``False`` is plain GPM (b5 variant).
        train_down: also train the down-projection (plain LoRA; baselines only).
        ca_epochs, ca_lr, ca_samples_per_class, ca_logit_norm: classifier alignment
            of ``inflora_ca`` (reference: 5 epochs, lr 0.01, 256 samples per class,
            logit norm 0.1 — none for CIFAR-100).
    """

    name: str = "inflora"
    lamb: float = 0.95
    lame: float = 1.0
    dual_memory: bool = True
    train_down: bool = False
    ca_epochs: int = 5
    ca_lr: float = 0.01
    ca_samples_per_class: int = 256
    ca_logit_norm: float | None = 0.1

    def __post_init__(self) -> None:
        for key in ("lamb", "lame"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ValueError(f"method.{key} must be a threshold in (0, 1], got {value!r}")
        if self.ca_epochs < 1 or self.ca_samples_per_class < 2 or not self.ca_lr > 0:
            raise ValueError("method.ca_epochs must be >= 1, method.ca_samples_per_class >= 2 and method.ca_lr > 0")
        if self.ca_logit_norm is not None and not self.ca_logit_norm > 0:
            raise ValueError(f"method.ca_logit_norm must be > 0 or null, got {self.ca_logit_norm}")


@dataclass
class Design:
    """What :meth:`ContinualMethod.design` produced for a session.

    Attributes:
        downs: ``(r, d)`` down-projection per wrapped layer, already scaled; empty
            when the session adds no branch.
        info: scalar diagnostics for tracking.
    """

    downs: dict[str, Tensor] = field(default_factory=dict)
    info: dict[str, float] = field(default_factory=dict)


class ContinualMethod(ABC):
    """Base class of a continual method; subclasses register with :func:`model.methods.register_method`.

    Args:
        spec: method settings.
        lora: branch settings.
    """

    name: ClassVar[str]
    uses_memory: ClassVar[bool] = False
    aligns_heads: ClassVar[bool] = False
    """Methods that re-train their heads after each session (``class_statistics``/``align``)."""

    def __init__(self, spec: MethodSpec, lora: LoRASpec) -> None:
        self.spec = spec
        self.lora = lora

    # ------------------------------------------------------------ structure
    def sessions(self, num_tasks: int) -> list[list[int]]:
        """Which tasks each session trains on; one task per session by default."""
        return [[t] for t in range(num_tasks)]

    @abstractmethod
    def branch_name(self, session: int) -> str:
        """Name of the branch that session ``session`` trains."""

    # --------------------------------------------------------------- stages
    @abstractmethod
    def design(
        self,
        net: ContinualViT,
        session: int,
        batches: Batches,
        memory: MemoryBank | None,
        device: torch.device,
        generator: torch.Generator,
    ) -> Design:
        """Down-projections of the session's new branch (empty if it adds none)."""

    def begin_session(
        self,
        net: ContinualViT,
        session: int,
        design: Design,
        head_sizes: Mapping[str, int],
        generator: torch.Generator,
    ) -> list[nn.Parameter]:
        """Add the designed branch and the session's heads; return what to train.

        Everything else is frozen: old branches, old heads and the backbone.
        """
        net.freeze_all()
        name = self.branch_name(session)
        if design.downs:
            net.add_branches(name, design.downs, train_down=self.spec.train_down)
        params = net.set_branch_trainable(name, True)
        for head, num_classes in head_sizes.items():
            layer = net.heads.add(head, num_classes, generator=generator)
            layer.requires_grad_(True)
            params.extend(layer.parameters())
        return params

    def update_memory(
        self,
        net: ContinualViT,
        session: int,
        num_sessions: int,
        batches: Batches,
        memory: MemoryBank | None,
        device: torch.device,
    ) -> tuple[MemoryBank | None, dict[str, float]]:
        """Memory after the session (and diagnostics); methods without memory keep ``None``."""
        return memory, {}

    # -------------------------------------------------------------- helpers
    def trained_branches(self, sessions: Sequence[int]) -> list[str]:
        """Distinct branch names trained in the given sessions, in order."""
        return list(dict.fromkeys(self.branch_name(s) for s in sessions))

    def random_downs(self, net: ContinualViT, generator: torch.Generator) -> dict[str, Tensor]:
        """Random orthonormal rows (scaled like a designed branch) for baselines."""
        downs = {}
        for name, layer in net.lora_layers.items():
            gaussian = torch.randn(layer.in_features, self.lora.rank, generator=generator, dtype=torch.float64)
            q, _ = torch.linalg.qr(gaussian)
            downs[name] = (q.T * self.lora.down_scale).float()
        return downs
