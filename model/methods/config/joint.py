"""Settings of joint training (model code: :mod:`model.methods.joint`)."""

from __future__ import annotations

from .base import ScaledLoRAConfig, declare_method

__all__ = ["JointConfig"]


@declare_method("joint")
class JointConfig(ScaledLoRAConfig):
    """Joint training has no settings besides its LoRA branch (the same budget as InfLoRA's)."""
