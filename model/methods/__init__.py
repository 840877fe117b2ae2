"""Continual methods by name. Adding a method is one file: subclass
:class:`~model.methods.base.ContinualMethod`, decorate it with
:func:`register_method`, and import the module here."""

from __future__ import annotations

from .base import ContinualMethod, Design, LoRASpec, MemoryBank, MethodSpec, head_name
from .registry import available_methods, create_method, register_method

# Importing registers the built-in methods.
from . import inflora, inflora_ca, joint, seq_lora  # noqa: E402,F401  isort: skip

__all__ = [
    "ContinualMethod",
    "Design",
    "LoRASpec",
    "MemoryBank",
    "MethodSpec",
    "available_methods",
    "create_method",
    "head_name",
    "register_method",
]
