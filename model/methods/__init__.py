"""Continual methods by name.

Adding a method is two files, as peft keeps a tuner's config apart from its model:
its settings in ``config/<name>.py`` (:func:`~model.methods.config.declare_method`:
name, settings, published figures; no torch) and its model code in ``<name>.py``
(a :class:`~model.methods.base.ContinualMethod` subclass with its steps, decorated
with :func:`register_method`), imported when the method is first built.

The names below load on first use (:mod:`model.lazy`): ``from model.methods.results
import StepResult`` or :func:`method_config_class` import no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from .base import ContinualMethod, MemoryBank, Step, default_steps, head_name
    from .config import LoRAConfig, MethodConfig, ScaledLoRAConfig, Searchable, setting
    from .context import StepContext
    from .published import PublishedFigure
    from .registry import available_methods, create_method, declaration, get_method_class, method_config_class, register_method
    from .results import EvalRow, StepResult

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".base": ("ContinualMethod", "MemoryBank", "Step", "default_steps", "head_name"),
    ".config": ("LoRAConfig", "MethodConfig", "ScaledLoRAConfig", "Searchable", "setting"),
    ".context": ("StepContext",),
    ".published": ("PublishedFigure",),
    ".registry": ("available_methods", "create_method", "declaration", "get_method_class", "method_config_class", "register_method"),
    ".results": ("EvalRow", "StepResult"),
})  # fmt: skip
