"""Continual methods by name. Adding a method is one file: subclass
:class:`~model.methods.base.ContinualMethod` with its config dataclass and its
steps, decorate it with :func:`register_method`, and import the module here."""

from __future__ import annotations

from .base import ContinualMethod, MemoryBank, Step, default_steps, head_name
from .config import LoRAConfig, MethodConfig, ScaledLoRAConfig, Searchable, setting
from .context import StepContext
from .published import PublishedFigure
from .registry import available_methods, create_method, get_method_class, method_config_class, register_method
from .results import EvalRow, StepResult

# Importing registers the built-in methods.
from . import cl_lora, coda_prompt, dualprompt, frozen, inflora, inflora_ca, joint, l2p, lora_minus, ranpac, sd_lora, seq_lora  # noqa: E402,F401  isort: skip

__all__ = [
    "ContinualMethod",
    "EvalRow",
    "LoRAConfig",
    "MemoryBank",
    "MethodConfig",
    "PublishedFigure",
    "ScaledLoRAConfig",
    "Searchable",
    "Step",
    "StepContext",
    "StepResult",
    "available_methods",
    "create_method",
    "default_steps",
    "get_method_class",
    "head_name",
    "method_config_class",
    "register_method",
    "setting",
]
