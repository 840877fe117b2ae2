"""InfLoRA+CA: InfLoRA with classifier alignment after every task (Liang & Li, CVPR 2024, Sec. 5).

The branches and memory are InfLoRA's; in addition the class-wise Gaussian
statistics of the final features are kept and, from the second task on, all
heads are re-trained on sampled features (:mod:`model.alignment`). The
reference implementation pairs it with plain GPM memory: set
``method.dual_memory: false`` to match it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..alignment import AlignSpec, align_heads, class_feature_stats
from ..net import ContinualViT
from ..training import Batches
from .inflora import InfLoRA
from .registry import register_method


@register_method
class InfLoRACA(InfLoRA):
    """InfLoRA + classifier alignment on sampled features."""

    name = "inflora_ca"
    aligns_heads = True

    def align_spec(self) -> AlignSpec:
        s = self.spec
        return AlignSpec(epochs=s.ca_epochs, lr=s.ca_lr, samples_per_class=s.ca_samples_per_class, logit_norm=s.ca_logit_norm)

    def class_statistics(self, net: ContinualViT, batches: Batches, device: torch.device) -> dict[int, tuple[Tensor, Tensor]]:
        return class_feature_stats(net, batches, device)

    def align(
        self,
        net: ContinualViT,
        session: int,
        stats: Mapping[int, tuple[Tensor, Tensor]],
        task_classes: Sequence[Sequence[int]],
        generator: torch.Generator,
        device: torch.device,
    ) -> list[float]:
        if session == 0:
            return []  # one task: nothing to balance (as the reference code)
        return align_heads(net, stats, task_classes, self.align_spec(), generator, device)
