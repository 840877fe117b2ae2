"""Field types shared by the prompt methods' settings (pydantic checks with one clear message)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

__all__ = ["PrefixLength", "Layers", "OptionalLayers"]


def _prefix_length(value: int) -> int:
    """A prefix prompt is split in half: keys, then values (official ``i = int(e_p_length/2)``)."""
    if value < 2 or value % 2:
        raise ValueError(f"must be an even integer >= 2 (half keys, half values), got {value!r}")
    return value


def _layers(allow_empty: bool):
    def check(value: list[int]) -> list[int]:
        """Distinct non-negative block indices (checked against the depth when the network is built)."""
        if not value and not allow_empty:
            raise ValueError(f"must be a non-empty list of block indices, got {value!r}")
        if any(i < 0 for i in value) or len(set(value)) != len(value):
            raise ValueError(f"must hold distinct non-negative block indices, got {list(value)}")
        return value

    return check


PrefixLength = Annotated[int, AfterValidator(_prefix_length)]
Layers = Annotated[list[int], AfterValidator(_layers(False))]
OptionalLayers = Annotated[list[int], AfterValidator(_layers(True))]
