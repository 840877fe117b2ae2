"""Settings of the frozen-backbone control (model code: :mod:`model.methods.frozen`)."""

from __future__ import annotations

from .base import MethodConfig, declare_method

__all__ = ["FrozenConfig"]


@declare_method("frozen")
class FrozenConfig(MethodConfig):
    """The frozen control has no settings."""
