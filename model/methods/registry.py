"""Name → method class registry (filled by the :func:`register_method` decorator)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .base import ContinualMethod
    from .config import MethodConfig

_REGISTRY: dict[str, type["ContinualMethod"]] = {}

M = TypeVar("M", bound="type[ContinualMethod]")


def register_method(cls: M) -> M:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"method {name!r} is registered twice")
    _REGISTRY[name] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method_class(name: str) -> type["ContinualMethod"]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {available_methods()}") from None


def method_config_class(name: str) -> type["MethodConfig"]:
    """The settings class of method ``name``."""
    return get_method_class(name).config_class


def create_method(name: str, config: "MethodConfig | None" = None) -> "ContinualMethod":
    """Instantiate method ``name`` with its settings (defaults when ``None``)."""
    return get_method_class(name)(config)
