"""Name → method class registry (filled by the :func:`register_method` decorator)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .base import ContinualMethod, LoRASpec, MethodSpec

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


def create_method(spec: "MethodSpec", lora: "LoRASpec") -> "ContinualMethod":
    """Instantiate the method named by ``spec.name``."""
    return get_method_class(spec.name)(spec, lora)
