"""Name → method: settings and published figures without torch, the model code on first use.

Every method is declared with its settings (:func:`~model.methods.config.declare_method`,
in ``model/methods/config/<name>.py``); validating a run config or reading published
figures needs only that. Its model code (``model/methods/<name>.py``, which imports
torch) is imported when the method is first built (:func:`get_method_class`), and
registers itself with :func:`register_method` (timm's ``_registry.py``, mammoth's
``models/__init__.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, TypeVar

from .config import MethodConfig, MethodDeclaration, declared_methods

if TYPE_CHECKING:
    from .base import ContinualMethod

__all__ = ["register_method", "available_methods", "declaration", "get_method_class", "method_config_class", "create_method"]

_CLASSES: dict[str, type["ContinualMethod"]] = {}

M = TypeVar("M", bound="type[ContinualMethod]")


def register_method(cls: M) -> M:
    """Class decorator: make ``cls`` the model code of the declared method ``cls.name``."""
    name = cls.name
    declared = declaration(name).config_class
    if cls.config_class is not declared:
        raise TypeError(f"method {name!r} is declared with {declared.__name__}, but {cls.__name__} takes {cls.config_class.__name__}")
    if name in _CLASSES and _CLASSES[name] is not cls:
        raise ValueError(f"method {name!r} is registered twice")
    _CLASSES[name] = cls
    return cls


def available_methods() -> list[str]:
    """The declared methods' names, sorted."""
    return sorted(declared_methods())


def declaration(name: str) -> MethodDeclaration:
    """What is declared of method ``name`` (settings, published figures, where its code is)."""
    try:
        return declared_methods()[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {available_methods()}") from None


def get_method_class(name: str) -> type["ContinualMethod"]:
    """The class of method ``name``, importing its module on first use."""
    module = declaration(name).module
    if name not in _CLASSES:
        importlib.import_module(module)
    try:
        return _CLASSES[name]
    except KeyError:
        raise LookupError(f"method {name!r}: its module {module} registers no class of that name (@register_method)") from None


def method_config_class(name: str) -> type[MethodConfig]:
    """The settings class of method ``name`` (no model code imported)."""
    return declaration(name).config_class


def create_method(name: str, config: MethodConfig | None = None) -> "ContinualMethod":
    """Instantiate method ``name`` with its settings (defaults when ``None``)."""
    return get_method_class(name)(config)
