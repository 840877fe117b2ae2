"""Settings as frozen pydantic models: each field declared once, with its help, bounds and search range.

A settings class (a method's, the training loop's) knows nothing of where it sits
in a run config: the config layer (:mod:`pipeline.config`) nests it and pydantic's
error locations name the key (``method.inflora.lamb``). A field's bounds are its
``Field`` constraints (``ge``, ``gt``, ``le``); ``search=True`` marks it tunable, and
the sweep space reads the range from those same constraints
(:func:`searchable_fields`), so a range is written in one place.
``affects_result=False`` marks settings that cannot change a run's numbers
(paths, resources, tracking): the result key leaves them out (:func:`result_payload`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Settings", "setting", "Searchable", "searchable_fields", "result_payload", "WIDTH"]

WIDTH = "width"
"""``bound=WIDTH``: the setting may not exceed the backbone's embedding width (a LoRA rank)."""


class Settings(BaseModel):
    """Base of every settings model: frozen, unknown keys rejected, one validation when built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @property
    def canonical_json(self) -> str:
        """The one serialisation of these settings (sorted keys): what run directories record, what caches key on."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def __hash__(self) -> int:
        return hash(self.canonical_json)

    def __eq__(self, other: object) -> bool:
        """Equal settings serialise alike."""
        return type(self) is type(other) and self.canonical_json == other.canonical_json  # type: ignore[attr-defined]

    def result_view(self) -> dict[str, Any]:
        """What of these settings can change results (override to drop what depends on other fields)."""
        out: dict[str, Any] = {}
        for name, field in type(self).model_fields.items():
            if _extra(field).get("affects_result", True) is not False:
                out[name] = result_payload(getattr(self, name))
        return out


def setting(
    default: Any,
    help: str,
    *,
    search: bool = False,
    affects_result: bool = True,
    bound: Literal["width"] | None = None,
    **constraints: Any,
) -> Any:
    """A field with its help text, its bounds (``ge=1``, ``gt=0``, ``le=1``…) and its markers.

    Args:
        default: the default value (a list or dict is copied per instance).
        help: what the setting means (``description``; shown by the sweep CLI).
        search: a sweep may tune it, within the field's bounds.
        affects_result: ``False`` for settings that cannot change the numbers.
        bound: an upper bound known only with the backbone (``"width"``).
        constraints: pydantic ``Field`` constraints.
    """
    extra = {"search": search, "affects_result": affects_result, "bound": bound}
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda: type(default)(default), description=help, json_schema_extra=extra, **constraints)
    return Field(default, description=help, json_schema_extra=extra, **constraints)


def _extra(field: Any) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


@dataclass(frozen=True)
class Searchable:
    """The values a sweep may give a setting, read from the field's own constraints.

    Args:
        kind: ``int`` or ``float``.
        low, high: bounds (``high`` may be ``inf``).
        low_open, high_open: the bound itself is not allowed (``gt``/``lt``).
        help: the field's description.
        bound: an upper bound that depends on the backbone (``"width"``).
    """

    kind: type
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    help: str = ""
    bound: str | None = None

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
        too_high = value >= self.high if self.high_open else value > self.high
        if too_low or too_high or not math.isfinite(value):
            raise ValueError(f"{where} = {value!r} is outside the allowed values {self.domain()}")
        return value

    def domain(self) -> str:
        left = "(" if self.low_open else "["
        right = ")" if self.high_open or not math.isfinite(self.high) else "]"
        high = self.high if math.isfinite(self.high) else "inf"
        return f"{left}{self.low}, {high}{right}"

    def capped(self, high: float) -> "Searchable":
        """This range with its upper bound lowered to ``high`` (a backbone's width)."""
        return Searchable(self.kind, self.low, min(self.high, high), self.low_open, False, self.help, None)


def searchable_fields(cls: type[BaseModel]) -> dict[str, Searchable]:
    """The tunable fields of ``cls`` (``search=True``) and their ranges, from their constraints."""
    out: dict[str, Searchable] = {}
    for name, field in cls.model_fields.items():
        extra = _extra(field)
        if not extra.get("search"):
            continue
        kind = field.annotation if field.annotation in (int, float) else float
        spec: dict[str, Any] = {}
        for item in field.metadata:
            if isinstance(item, annotated_types.Ge):
                spec["low"] = float(item.ge)
            elif isinstance(item, annotated_types.Gt):
                spec.update(low=float(item.gt), low_open=True)
            elif isinstance(item, annotated_types.Le):
                spec["high"] = float(item.le)
            elif isinstance(item, annotated_types.Lt):
                spec.update(high=float(item.lt), high_open=True)
        if kind is int and "low" in spec:
            spec["low"] = int(spec["low"])
        out[name] = Searchable(kind, help=field.description or "", bound=extra.get("bound"), **spec)
    return out


def result_payload(value: Any) -> Any:
    """What of ``value`` can change results, as plain JSON values (settings models recursed)."""
    if isinstance(value, Settings):
        return value.result_view()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [result_payload(v) for v in value]
    if isinstance(value, dict):
        return {k: result_payload(v) for k, v in value.items()}
    return value
