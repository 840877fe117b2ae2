"""Checks shared by the prompt methods' settings (one clear line naming the key)."""

from __future__ import annotations

from typing import Any

__all__ = ["check_positive_int", "check_prefix_length", "check_layers"]


def check_positive_int(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be an integer >= 1, got {value!r}")


def check_prefix_length(value: Any, where: str) -> None:
    """A prefix prompt is split in half: keys, then values (official ``i = int(e_p_length/2)``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 2 or value % 2:
        raise ValueError(f"{where} must be an even integer >= 2 (half keys, half values), got {value!r}")


def check_layers(value: Any, where: str, allow_empty: bool = False) -> None:
    """Distinct non-negative block indices (checked against the depth when the network is built)."""
    if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
        raise ValueError(f"{where} must be a {'' if allow_empty else 'non-empty '}list of block indices, got {value!r}")
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in value) or len(set(value)) != len(value):
        raise ValueError(f"{where} must hold distinct non-negative block indices, got {list(value)}")
