"""Settings of a method: one frozen pydantic model per method, validated once when loaded.

Each method declares its settings in its own module of this package
(``config/<name>.py``) with :func:`declare_method`, apart from its model code
(``methods/<name>.py``, which needs torch), as peft keeps ``tuners/lora/config.py``
apart from ``tuners/lora/model.py``: a run config is validated, and a method's
published figures are read, without importing torch.

Every field is declared with :func:`~model.settings.setting`: its help text, its
bounds and, when tunable, ``search=True``; the sweep builds its space from those,
so a method's tunable settings are declared beside the method and nowhere else.
The LoRA settings (rank, blocks, scale of the down-projection) belong to the
methods that add LoRA branches (:class:`LoRAConfig`); the others have none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, field_validator

from ...lora_constants import REFERENCE_DOWN_SCALE, check_targets
from ...settings import WIDTH, Searchable, Settings, searchable_fields, setting
from ..published import PublishedFigure

__all__ = [
    "MethodConfig",
    "LoRAConfig",
    "ScaledLoRAConfig",
    "Searchable",
    "setting",
    "BlocksSpec",
    "THRESHOLD",
    "Targets",
    "MethodDeclaration",
    "declare_method",
    "declared_methods",
]

BlocksSpec = str | int | list[int]

THRESHOLD = {"gt": 0.0, "le": 1.0}
"""Bounds of a memory threshold, (0, 1]."""

Targets = Annotated[tuple[str, ...], BeforeValidator(lambda v: check_targets(list(v)) if isinstance(v, (list, tuple)) else v)]
"""Rows of ``qkv`` a method's branches adapt: distinct names among q, k, v, kept in that order."""


class MethodConfig(Settings):
    """Base of every method's settings (a method's section of a run config).

    Subclasses add fields with :func:`setting`; checks that involve several
    fields are field validators that raise ``ValueError("must …")``.
    """

    @classmethod
    def searchable(cls) -> dict[str, Searchable]:
        """The tunable fields and their ranges."""
        return searchable_fields(cls)


class LoRAConfig(MethodConfig):
    """Where a method's LoRA branches go and how large they are.

    Args:
        rank: rows ``r`` of each down-projection (paper: 10; DomainNet 30).
        blocks: ``"all"``, the first ``n`` blocks (b5 variant: ``5``) or a list of indices.
    """

    rank: int = setting(10, "LoRA rank r (rows of each down-projection)", search=True, bound=WIDTH, ge=1)
    blocks: BlocksSpec = setting("all", "blocks whose qkv get branches: 'all', the first n, or a list of indices")

    @field_validator("blocks", mode="before")
    @classmethod
    def _check_blocks(cls, value: Any) -> Any:
        if value == "all" and isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError(f"must be >= 1 when an int, got {value}")
            return value
        if isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
            return value
        raise ValueError(f"must be 'all', an int or a list of block indices, got {value!r}")


class ScaledLoRAConfig(LoRAConfig):
    """LoRA branches whose down-projection is designed (or drawn) as scaled orthonormal rows."""

    down_scale: float = setting(REFERENCE_DOWN_SCALE, "factor on the designed rows; the reference code's 1/sqrt(3)", gt=0)


Published = tuple[PublishedFigure, ...] | Mapping[str, Mapping[str, str]]
"""A method's published figures: :class:`~model.methods.published.PublishedFigure` s, or the older
``{"<paper config name>": {"paper_final": ..., "paper_average": ...}}`` (read by ``figures_of``)."""


@dataclass(frozen=True)
class MethodDeclaration:
    """What is known of a method without importing its model code.

    Args:
        name: the method's name (``method.name`` in a run config).
        config_class: its settings.
        module: the module whose :func:`~model.methods.registry.register_method` class
            implements it, imported when the method is first built.
        published: its published final/average accuracy (%), each with the protocol it
            was measured under (a ``configs/paper/`` config); ``inflora report`` prints
            one only beside runs that follow its protocol. Only figures checked against
            their source.
    """

    name: str
    config_class: type[MethodConfig]
    module: str
    published: Published = ()


_DECLARED: dict[str, MethodDeclaration] = {}

C = TypeVar("C", bound=type[MethodConfig])


def declare_method(name: str, *, published: Published = (), module: str | None = None) -> Callable[[C], C]:
    """Class decorator on a method's settings: declare method ``name``.

    Args:
        name: the method's name.
        published: its published figures (:attr:`MethodDeclaration.published`).
        module: where its model code lives (default ``model.methods.<name>``).
    """

    def declare(cls: C) -> C:
        if name in _DECLARED and _DECLARED[name].config_class is not cls:
            raise ValueError(f"method {name!r} is declared twice")
        _DECLARED[name] = MethodDeclaration(name, cls, module or f"model.methods.{name}", published)
        return cls

    return declare


def declared_methods() -> Mapping[str, MethodDeclaration]:
    """Every declared method by name (the modules of :mod:`model.methods.config` declare the built-in ones)."""
    return MappingProxyType(_DECLARED)
