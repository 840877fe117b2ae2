"""Public names of a package imported on first use (PEP 562 module ``__getattr__``).

``model``, ``model.methods`` and ``pipeline.data`` re-export names from modules that
import torch and timm; importing them on first use lets a reader of settings or
results (:mod:`model.methods.config`, :mod:`model.methods.results`,
:mod:`pipeline.data.config`) go through those packages without paying for torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, sources: Mapping[str, Sequence[str]]) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` of a package whose names load on first use.

    Args:
        package: the package's ``__name__``.
        sources: relative module (``".backbone"``) → the public names it defines.

    Returns:
        The three module attributes to assign in the package's ``__init__``.
    """
    where = {name: module for module, names in sources.items() for name in names}
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        try:
            module = where[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value  # later look-ups skip this hook
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return sorted(where), __getattr__, __dir__
