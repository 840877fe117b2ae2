"""Settings of InfLoRA+CA (model code: :mod:`model.methods.inflora_ca`)."""

from __future__ import annotations

from .base import declare_method, setting
from .inflora import InfLoRAConfig

__all__ = ["InfLoRACAConfig"]


# no published figures: InfLoRA's belong to InfLoRA without alignment
@declare_method("inflora_ca")
class InfLoRACAConfig(InfLoRAConfig):
    """Settings of InfLoRA+CA; the reference's alignment defaults."""

    dual_memory: bool = setting(False, "the reference pairs CA with plain GPM (update_GPM)")
    ca_epochs: int = setting(5, "epochs of head re-training on sampled features", ge=1)
    ca_lr: float = setting(0.01, "SGD learning rate of the alignment", gt=0)
    ca_samples_per_class: int = setting(256, "features sampled per class and epoch", ge=2)
    ca_logit_norm: float | None = setting(0.1, "per-task logit normalisation temperature (reference: none on CIFAR-100)", gt=0)
