"""Per-task linear heads on the final CLS feature (class-incremental, no task id at test)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["TaskHeads", "HeadInit", "linear_default_init"]

HeadInit = Callable[[nn.Linear, "torch.Generator | None"], None]
"""Initialises a new head in place, drawing from the generator."""


def linear_default_init(head: nn.Linear, generator: torch.Generator | None) -> None:
    """PyTorch's ``nn.Linear`` default: weight ``kaiming_uniform_(a=√5)``, bias U(±1/√d)."""
    bound = 1.0 / math.sqrt(head.in_features)
    with torch.no_grad():
        nn.init.kaiming_uniform_(head.weight, a=math.sqrt(5), generator=generator)
        nn.init.uniform_(head.bias, -bound, bound, generator=generator)


class TaskHeads(nn.Module):
    """A growing set of linear heads, one per task, keyed ``"task_003"``.

    Prediction concatenates the logits of every head in insertion order, so the
    column of a class is its position in the run's class order.

    Args:
        in_features: feature size of the backbone.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.heads = nn.ModuleDict()
        # Follows .to(device) even before the first head exists.
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    def add(self, name: str, num_classes: int, generator: torch.Generator | None = None, init: HeadInit | None = None) -> nn.Linear:
        """Add a head initialised by ``init`` (PyTorch's ``nn.Linear`` default when ``None``) from ``generator``.

        The head is initialised on the CPU (the generator is a CPU one, and the
        values are then the same on every device) and moved to the heads' device.
        """
        if name in self.heads:
            raise KeyError(f"head {name!r} already exists")
        if num_classes < 1:
            raise ValueError(f"a head needs at least one class, got {num_classes}")
        head = nn.Linear(self.in_features, num_classes)
        (init or linear_default_init)(head, generator)
        head = head.to(self._device_anchor.device)
        self.heads[name] = head
        return head

    @property
    def num_classes(self) -> int:
        return sum(h.out_features for h in self.heads.values())  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.heads)

    def forward(self, features: Tensor, names: list[str] | None = None) -> Tensor:
        """Concatenated logits of the heads ``names`` (all heads when ``None``)."""
        keys = list(self.heads) if names is None else names
        if not keys:
            raise RuntimeError("no head has been added yet")
        return torch.cat([self.heads[k](features) for k in keys], dim=-1)
