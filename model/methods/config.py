"""Settings of a method: one frozen dataclass per method, validated once when loaded.

Every field may carry ``metadata`` with a ``help`` text and a ``search`` range
(:class:`Searchable`): the sweep builds its space from those, so a method's
tunable settings are declared beside the method and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..lora import REFERENCE_DOWN_SCALE

__all__ = ["MethodConfig", "LoRASpec", "Searchable", "setting", "check_threshold", "BlocksSpec"]

BlocksSpec = str | int | list[int]


@dataclass(frozen=True)
class Searchable:
    """The values a sweep may give a setting.

    Args:
        kind: ``int`` or ``float``.
        low, high: bounds of what the method accepts (``high`` may be ``inf``).
        low_open: ``low`` itself is not allowed (``(0, 1]`` thresholds).
    """

    kind: type
    low: float
    high: float = math.inf
    low_open: bool = False

    def check(self, value: Any, where: str) -> int | float:
        """``value`` coerced to ``kind``; a ``ValueError`` naming ``where`` when outside."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        if self.kind is int:
            if float(value) != int(value):
                raise ValueError(f"{where} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        too_low = value <= self.low if self.low_open else value < self.low
        if too_low or value > self.high or not math.isfinite(value):
            raise ValueError(f"{where} = {value!r} is outside the allowed values {self.domain()}")
        return value

    def domain(self) -> str:
        left = "(" if self.low_open else "["
        right = "]" if math.isfinite(self.high) else ")"
        high = self.high if math.isfinite(self.high) else "inf"
        return f"{left}{self.low}, {high}{right}"


def setting(default: Any, help: str, search: Searchable | None = None) -> Any:
    """A config field with its help text and, when tunable, its search range."""
    metadata = {"help": help, "search": search}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def check_threshold(value: Any, where: str) -> None:
    """A memory threshold must lie in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"{where} must be a threshold in (0, 1], got {value!r}")


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's settings (the ``method.<name>`` section of a run config).

    Subclasses add fields with :func:`setting` and validate them in
    ``__post_init__``, raising ``ValueError`` messages that start with the key.
    """

    section: ClassVar[str] = "method"

    @classmethod
    def searchable(cls) -> dict[str, Searchable]:
        """The tunable fields and their ranges."""
        return {f.name: f.metadata["search"] for f in dataclasses.fields(cls) if f.metadata.get("search") is not None}

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    def check_searchable(self, prefix: str) -> None:
        """Every tunable field inside its range (what a sweep could also give it)."""
        for name, search in self.searchable().items():
            search.check(getattr(self, name), f"{prefix}.{name}")


@dataclass(frozen=True)
class LoRASpec:
    """Where LoRA branches go and how large they are (the ``lora`` section; LoRA methods only).

    Args:
        rank: rows ``r`` of each down-projection (paper: 10; DomainNet 30).
        blocks: ``"all"``, the first ``n`` blocks (b5 variant: ``5``) or a list of indices.
        down_scale: factor on the designed rows; the reference code's 1/√3.
    """

    rank: int = setting(10, "LoRA rank r (rows of each down-projection)", Searchable(int, 1))
    blocks: BlocksSpec = "all"
    down_scale: float = REFERENCE_DOWN_SCALE

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank must be an integer >= 1, got {self.rank!r}")
        if isinstance(self.blocks, str) and self.blocks != "all":
            raise ValueError(f"lora.blocks must be 'all', an int or a list of block indices, got {self.blocks!r}")
        if isinstance(self.blocks, int) and not isinstance(self.blocks, bool) and self.blocks < 1:
            raise ValueError(f"lora.blocks must be >= 1 when an int, got {self.blocks}")
        if not self.down_scale > 0:
            raise ValueError(f"lora.down_scale must be > 0, got {self.down_scale}")

