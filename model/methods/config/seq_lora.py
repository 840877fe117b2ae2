"""Settings of sequential LoRA (model code: :mod:`model.methods.seq_lora`)."""

from __future__ import annotations

from .base import ScaledLoRAConfig, declare_method, setting

__all__ = ["SeqLoRAConfig"]


@declare_method("seq_lora")
class SeqLoRAConfig(ScaledLoRAConfig):
    """Settings of sequential LoRA: its branch, and whether its down-projection trains too."""

    train_down: bool = setting(False, "also train the down-projection (plain LoRA)")
