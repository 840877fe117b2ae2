"""Sweep configuration: a run config plus a ``sweep:`` section, validated at the edge.

A sweep file is a run config (or ``base: demo.yaml``, a run config it extends)
with one more top-level section::

    base: demo.yaml                 # optional; relative to this file
    train: {epochs: 5}              # run-config keys merged over the base
    sweep:
      name: demo-sweep
      space:
        rank: {low: 1, high: 32}
        lamb: {low: 0.80, high: 0.999}

Keys, defaults and allowed values are those of :class:`SweepConfig`; the base run
config is validated by :func:`pipeline.config.config_from_dict`, the space by
:meth:`sweeps.space.SearchSpace.from_dict`. Errors are
:class:`pipeline.config.ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from pipeline.config import (
    ConfigError,
    RunConfig,
    build_section,
    read_yaml_mapping,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    updated,
)

from .space import SearchSpace

__all__ = [
    "SAMPLERS",
    "SCHEDULERS",
    "SWEEP_FILE",
    "SamplerConfig",
    "SchedulerConfig",
    "Sweep",
    "SweepConfig",
    "TrialResources",
    "load_sweep",
    "sweep_from_dict",
]

SWEEP_FILE = "sweep.yaml"  # the resolved sweep, written into its directory (resume from the directory)

# name → (optuna.samplers class, extra package it needs)
SAMPLERS: dict[str, tuple[str, str | None]] = {
    "tpe": ("TPESampler", None),
    "random": ("RandomSampler", None),
    "gp": ("GPSampler", "scipy"),
    "qmc": ("QMCSampler", "scipy"),
    "cmaes": ("CmaEsSampler", "cmaes"),
}
SCHEDULERS = ("asha", "fifo")


@dataclass(frozen=True)
class SamplerConfig:
    """The Optuna sampler that proposes configurations.

    Args:
        name: ``tpe`` (default), ``random``, ``gp``, ``qmc`` or ``cmaes``.
        seed: seed of the sampler (``null``: nondeterministic).
        options: keyword arguments of the sampler class (``n_startup_trials``…).
    """

    name: str = "tpe"
    seed: int | None = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"sweep.sampler.name must be one of {sorted(SAMPLERS)}, got {self.name!r}")
        needs = SAMPLERS[self.name][1]
        if needs and importlib.util.find_spec(needs) is None:
            raise ValueError(f"sweep.sampler.name {self.name!r} needs the {needs!r} package: pip install {needs}")

    def create(self):
        """The ``optuna.samplers`` instance."""
        import optuna

        cls = getattr(optuna.samplers, SAMPLERS[self.name][0])
        try:
            return cls(seed=self.seed, **self.options)
        except TypeError as exc:
            raise ConfigError(f"sweep.sampler.options: {exc}") from exc


@dataclass(frozen=True)
class SchedulerConfig:
    """The Ray Tune trial scheduler.

    Args:
        name: ``asha`` (stop trials that fall behind after the first tasks) or
            ``fifo`` (run every trial to its last task).
        grace_period: tasks every trial runs before ASHA may stop it. The default 2
            judges a trial once its memory is in play: the accuracy after the first
            task does not depend on ``lamb``/``lame`` at all.
        reduction_factor: ASHA keeps the best 1/``reduction_factor`` at each rung.
    """

    name: str = "asha"
    grace_period: int = 2
    reduction_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULERS:
            raise ValueError(f"sweep.scheduler.name must be one of {list(SCHEDULERS)}, got {self.name!r}")
        if self.grace_period < 1:
            raise ValueError(f"sweep.scheduler.grace_period must be >= 1 task, got {self.grace_period}")
        if not self.reduction_factor > 1:
            raise ValueError(f"sweep.scheduler.reduction_factor must be > 1, got {self.reduction_factor}")


@dataclass(frozen=True)
class TrialResources:
    """What one trial reserves on the Ray cluster (its stages run inside it).

    Args:
        cpu: CPUs (also the torch thread count of its stages).
        gpu: GPUs; a fraction (0.5) lets trials share a GPU.
    """

    cpu: float = 1.0
    gpu: float = 0.0

    def __post_init__(self) -> None:
        if not self.cpu > 0:
            raise ValueError(f"sweep.resources_per_trial.cpu must be > 0, got {self.cpu}")
        if self.gpu < 0:
            raise ValueError(f"sweep.resources_per_trial.gpu must be >= 0, got {self.gpu}")
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"sweep.resources_per_trial.gpu above 1 must be a whole number, got {self.gpu}")


@dataclass(frozen=True)
class SweepConfig:
    """The ``sweep:`` section.

    Args:
        name: the sweep's name: its directory ``<dir>/<name>``, the MLflow parent
            run and (by default) the Optuna study.
        space: parameter name → range (see :mod:`sweeps.space`).
        dir: where sweeps live (Ray Tune's ``storage_path``); a path every node
            of the cluster mounts.
        num_samples: configurations to try.
        max_concurrent: trials running at once (Ray Tune's ``ConcurrencyLimiter``).
        seeds: seeds every configuration runs; the objective is their mean
            (default: the run config's ``seeds``).
        sampler: the Optuna sampler.
        scheduler: the Ray Tune scheduler.
        storage: SQLAlchemy URL of the Optuna study (default: ``sqlite:///<sweep dir>/optuna.db``).
        study_name: Optuna study name (default: ``name``).
        resources_per_trial: ``{cpu: 1, gpu: 0}``.
        max_failures: retries of a trial whose worker failed (Ray Tune ``FailureConfig``).
        enqueue: configurations to evaluate first (``[{rank: 8, lamb: 0.95}]``).
        reuse_actors: run consecutive trials in the same worker process (saves
            the torch import and data loading per trial).
    """

    name: str = "sweep"
    space: dict[str, Any] = field(default_factory=dict)
    dir: str = "runs/sweeps"
    num_samples: int = 8
    max_concurrent: int = 2
    seeds: list[int] | None = None
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    storage: str | None = None
    study_name: str | None = None
    resources_per_trial: TrialResources = field(default_factory=TrialResources)
    max_failures: int = 1
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    reuse_actors: bool = True

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"sweep.name must be a non-empty name without '/', got {self.name!r}")
        if "://" in self.dir:
            raise ValueError(f"sweep.dir must be a filesystem path (trials write run directories there), got {self.dir!r}")
        if self.num_samples < 1:
            raise ValueError(f"sweep.num_samples must be >= 1, got {self.num_samples}")
        if self.max_concurrent < 1:
            raise ValueError(f"sweep.max_concurrent must be >= 1, got {self.max_concurrent}")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"sweep.seeds must list distinct seeds, got {self.seeds}")
        if self.max_failures < 0:
            raise ValueError(f"sweep.max_failures must be >= 0, got {self.max_failures}")


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: the base run config, the sweep section and its space.

    Everything a trial needs travels in this object (it is pickled to the workers).
    """

    base: RunConfig
    config: SweepConfig
    space: SearchSpace

    @property
    def dir(self) -> Path:
        """The sweep's directory: Ray Tune experiment, Optuna sqlite file, trials' run directories."""
        return Path(self.config.dir) / self.config.name

    @property
    def name(self) -> str:
        return self.config.name

    def trial_dir(self, trial_id: str) -> Path:
        """Where a trial's runs and ``trial.json`` live."""
        return self.dir / "trials" / trial_id

    @property
    def seeds(self) -> list[int]:
        return list(self.config.seeds or self.base.seeds)

    @property
    def storage_url(self) -> str:
        return self.config.storage or f"sqlite:///{self.dir / 'optuna.db'}"

    @property
    def study_name(self) -> str:
        return self.config.study_name or self.config.name

    @property
    def num_sessions(self) -> int:
        """Reports per trial: one after each task (session); ASHA's ``max_t``."""
        from pipeline.stages import method_of

        return len(method_of(self.base).sessions(self.base.data.num_tasks))

    def to_dict(self) -> dict[str, Any]:
        """The resolved sweep file (absolute paths, base merged): what ``sweep.yaml`` holds."""
        data = config_to_dict(self.base)
        data["sweep"] = config_to_dict(self.config)
        return data

    def trial_config(self, params: dict[str, Any], trial_id: str) -> RunConfig:
        """The run config of one trial: the base with ``params`` applied.

        Each trial writes its runs under ``<sweep dir>/trials/<trial_id>``; Ray Tune keeps
        trial ids across ``Tuner.restore``, so a resumed trial finds its finished stages.
        Its stages run inside the trial's worker with the trial's resources.
        """
        data = config_to_dict(updated(self.base, self.space.updates(params)))
        data["output_dir"] = str(self.trial_dir(trial_id))
        data["seeds"] = self.seeds
        res = self.config.resources_per_trial
        data["resources"].update(executor="local", cpus_per_stage=res.cpu, gpus_per_stage=res.gpu)
        return config_from_dict(data)

    def best_config(self, params: dict[str, Any], seeds: list[int]) -> RunConfig:
        """The base config with ``params``: what ``inflora run`` re-runs with other seeds."""
        data = config_to_dict(updated(self.base, self.space.updates(params)))
        data["name"] = f"{self.name}-best"
        data["seeds"] = seeds
        return config_from_dict(data)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def sweep_from_dict(data: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None) -> Sweep:
    """Validate a sweep mapping (run-config keys plus ``sweep:``; no ``base:``).

    Relative paths (``sweep.dir``, the run config's paths) resolve against ``base_dir`` (cwd).
    """
    data = dict(data)
    section = data.pop("sweep", None)
    if section is None:
        raise ConfigError("a sweep file needs a sweep: section (name, space, …) next to the run config")
    base = config_from_dict(data, base_dir)
    if not isinstance(section, Mapping):
        raise ConfigError(f"sweep must be a mapping, got {section!r}")
    section = dict(section)
    if isinstance(section.get("dir"), str) and "://" not in section["dir"]:
        path = Path(os.path.expandvars(os.path.expanduser(section["dir"])))
        section["dir"] = str(path if path.is_absolute() else (Path(base_dir or Path.cwd()) / path).resolve())
    cfg = build_section(SweepConfig, section, "sweep.")
    if not base.data.val_fraction > 0:
        raise ConfigError("data.val_fraction must be > 0 for a sweep: the objective is the accuracy on the validation split")
    space = SearchSpace.from_dict(cfg.space, base)
    for i, point in enumerate(cfg.enqueue):
        space.check_point(point, f"sweep.enqueue[{i}]")
    cfg.sampler.create()  # bad sampler options fail here, not in the driver's Tuner
    return Sweep(base, cfg, space)


def load_sweep(path: str | os.PathLike[str], overrides: list[str] | None = None) -> Sweep:
    """Read a sweep file (or a sweep directory's ``sweep.yaml``), apply ``key=value`` overrides, validate.

    Overrides address the whole file: ``train.epochs=2`` or ``sweep.num_samples=4``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SWEEP_FILE
    data = read_yaml_mapping(path, "sweep file")
    base_file = data.pop("base", None)
    if base_file is not None:
        if not isinstance(base_file, str):
            raise ConfigError(f"base must be the path of a run config, got {base_file!r}")
        base_path = Path(base_file) if Path(base_file).is_absolute() else path.parent / base_file
        data = _deep_merge(read_yaml_mapping(base_path, "base: run config"), data)
    data = apply_overrides(data, overrides or [])
    return sweep_from_dict(data)
