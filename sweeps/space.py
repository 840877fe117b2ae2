"""The search space of a sweep: which hyperparameters, over which ranges.

Parameters are named by their field and map to one key of the run config each:
the union of the searchable fields (``search=True``, :mod:`model.settings`) of the
training settings and of the selected method's settings, each with the range of
its own field constraints, so ``inflora sweep`` works for every registered method
without editing this module, and a method without LoRA offers no rank:

==============  ==========================  ======  ====================================
name            config key                  type    allowed values
==============  ==========================  ======  ====================================
``lr``          ``train.lr``                float   > 0 (usually on a log scale)
``epochs``      ``train.epochs``            int     >= 1
``<field>``     ``method.<method>.<field>`` method  the method's declared range (InfLoRA:
                                                    ``rank`` 1 … the backbone's width,
                                                    ``lamb``, ``lame`` in (0, 1])
==============  ==========================  ======  ====================================

A parameter is a range ``{low: 1, high: 32}`` (bounds included; ``log: true``
samples on a log scale, ``step`` quantises) or a list ``{values: [4, 8, 16]}``.
Every problem is a :class:`pipeline.config.ConfigError` naming the key
(``sweep.space.rank.high``) and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from model.settings import WIDTH, Searchable, searchable_fields
from model.train_spec import TrainSpec
from pipeline.config import ConfigError, RunConfig
from pipeline.running.preflight import architecture

__all__ = ["ParamSpec", "SearchSpace", "embedding_dim", "parameters_for"]


@dataclass(frozen=True)
class _Parameter:
    """A tunable setting: its config key and the values the pipeline accepts."""

    key: str
    search: Searchable

    @property
    def kind(self) -> type:
        return self.search.kind

    @property
    def help(self) -> str:
        return self.search.help

    def check(self, value: Any, where: str) -> Any:
        try:
            return self.search.check(value, where)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


_SPEC_KEYS = {"low", "high", "log", "step", "values"}


def parameters_for(base: RunConfig) -> dict[str, _Parameter]:
    """Every parameter a sweep over ``base`` may search: the searchable training settings and
    those of its method (a range bounded by the backbone's width is capped here)."""
    method = base.method.name
    params = {name: _Parameter(f"train.{name}", s) for name, s in searchable_fields(TrainSpec).items()}
    for name, search in searchable_fields(type(base.method.config)).items():
        if name in params:
            raise ConfigError(f"method {method!r} declares a searchable setting {name!r} that clashes with {params[name].key}")
        if search.bound == WIDTH:
            search = search.capped(embedding_dim(base))
        params[name] = _Parameter(f"method.{method}.{name}", search)
    return params


@dataclass(frozen=True)
class ParamSpec:
    """One dimension of the search space.

    Args:
        name: a key of :data:`PARAMETERS` (``rank``, ``lamb``…).
        low: lower bound (included); ``None`` for a list of values.
        high: upper bound (included).
        log: sample on a log scale.
        step: quantisation step (ints: default 1).
        values: the candidates of a categorical parameter.
    """

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    values: tuple[Any, ...] | None = None

    key: str = ""
    """The run-config key this parameter sets (``method.inflora.rank``, ``train.lr``)."""
    kind: type = float

    @property
    def is_int(self) -> bool:
        return self.kind is int

    def distribution(self):
        """The Optuna distribution of this parameter (what OptunaSearch samples from)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.values is not None:
            return CategoricalDistribution(list(self.values))
        if self.is_int:
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        if self.values is not None:
            return value in self.values
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> str:
        """Short text for MLflow params and the CLI: ``int [1, 32]``, ``float [1e-4, 0.01] log``."""
        kind = "int" if self.is_int else "float"
        if self.values is not None:
            return f"{kind} one of {list(self.values)}"
        text = f"{kind} [{self.low:g}, {self.high:g}]"
        if self.log:
            text += " log"
        if self.step is not None:
            text += f" step {self.step:g}"
        return text


def embedding_dim(cfg: RunConfig) -> int:
    """Embedding dimension of the run's backbone, from preflight's meta-device model (no weights)."""
    return int(architecture(cfg.backbone)["width"])


class SearchSpace:
    """The validated search space of a sweep, in declaration order.

    Args:
        params: one spec per swept parameter.
    """

    def __init__(self, params: Sequence[ParamSpec]) -> None:
        self.params = tuple(params)

    def __repr__(self) -> str:
        return f"SearchSpace({', '.join(f'{p.name}: {p.describe()}' for p in self.params)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.params == other.params

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    # ------------------------------------------------------------ validation
    @classmethod
    def from_dict(cls, data: Any, base: RunConfig, prefix: str = "sweep.space") -> SearchSpace:
        """Validate the ``space`` mapping of a sweep against its base run config.

        Raises:
            ConfigError: unknown parameter names, malformed or empty ranges, values the
                pipeline rejects (a rank above the embedding dimension, a threshold
                outside (0, 1]), or thresholds swept for a method without memory.
        """
        limits = parameters_for(base)
        if not isinstance(data, Mapping) or not data:
            raise ConfigError(f"{prefix} must map parameter names to ranges, e.g. rank: {{low: 1, high: 32}}; known names: {sorted(limits)}")
        unknown = sorted(set(data) - set(limits))
        if unknown:
            raise ConfigError(
                f"{prefix}: unknown parameter(s) {', '.join(map(str, unknown))} for method {base.method.name!r}; known: "
                + ", ".join(f"{n} ({p.key}: {p.help})" for n, p in limits.items())
            )
        return cls([_parse_param(name, data[name], limits[name], f"{prefix}.{name}") for name in data])

    def check_point(self, point: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Validate a full assignment (an enqueued point): every name known and in range."""
        if not isinstance(point, Mapping):
            raise ConfigError(f"{where} must map parameter names to values, got {point!r}")
        missing = [n for n in self.names if n not in point]
        extra = [n for n in point if n not in self.names]
        if missing or extra:
            raise ConfigError(f"{where} must give exactly the swept parameters {self.names}; missing {missing}, unknown {extra}")
        for p in self.params:
            if not p.contains(point[p.name]):
                raise ConfigError(f"{where}.{p.name} = {point[p.name]!r} is outside the space: {p.describe()}")
        return dict(point)

    # ------------------------------------------------------------------ use
    def distributions(self) -> dict[str, Any]:
        """``{name: optuna distribution}``: the ``space`` argument of OptunaSearch."""
        return {p.name: p.distribution() for p in self.params}

    def updates(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``{"method.inflora.rank": 8, …}``: the typed config updates of a point, for :func:`pipeline.config.updated`."""
        return {p.key: int(params[p.name]) if p.is_int else float(params[p.name]) for p in self.params}

    def describe(self) -> dict[str, str]:
        return {p.name: p.describe() for p in self.params}


def _parse_param(name: str, spec: Any, limits: _Parameter, where: str) -> ParamSpec:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be a range {{low: …, high: …}} or {{values: […]}}, got {spec!r}")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_SPEC_KEYS)}")
    if "values" in spec:
        if set(spec) - {"values"}:
            raise ConfigError(f"{where}: give either values or low/high, not both")
        values = spec["values"]
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"{where}.values must be a non-empty list, got {values!r}")
        checked = tuple(limits.check(v, f"{where}.values[{i}]") for i, v in enumerate(values))
        if len(set(checked)) != len(checked):
            raise ConfigError(f"{where}.values has duplicates: {list(values)}")
        return ParamSpec(name, values=checked, key=limits.key, kind=limits.kind)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where} needs low and high (bounds included), or values")
    low = limits.check(spec["low"], f"{where}.low")
    high = limits.check(spec["high"], f"{where}.high")
    if not low < high:
        raise ConfigError(
            f"{where}: empty range [{low}, {high}]: low must be below high "
            "(to fix the value, set it in the run config and drop it from the space)"
        )
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
            raise ConfigError(f"{where}.step must be a positive number, got {step!r}")
        if limits.kind is int and int(step) != step:
            raise ConfigError(f"{where}.step must be an integer for {name}, got {step!r}")
        if log and (limits.kind is float or step != 1):
            raise ConfigError(f"{where}: log scale and step cannot be combined")
        if step > high - low:
            raise ConfigError(f"{where}: step {step} is larger than the range [{low}, {high}]")
    if log and not low > 0:
        raise ConfigError(f"{where}: a log-scale range needs low > 0, got {low}")
    return ParamSpec(name, low=low, high=high, log=log, step=step, key=limits.key, kind=limits.kind)
