"""Settings of a method: one frozen pydantic model per method, validated once when loaded.

Every field is declared with :func:`~model.settings.setting`: its help text, its
bounds and, when tunable, ``search=True``; the sweep builds its space from those,
so a method's tunable settings are declared beside the method and nowhere else.
The LoRA settings (rank, blocks, scale of the down-projection) belong to the
methods that add LoRA branches (:class:`LoRAConfig`); the others have none.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, field_validator

from ..lora import REFERENCE_DOWN_SCALE, check_targets
from ..settings import WIDTH, Searchable, Settings, searchable_fields, setting

__all__ = ["MethodConfig", "LoRAConfig", "ScaledLoRAConfig", "Searchable", "setting", "BlocksSpec", "THRESHOLD", "Targets"]

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
