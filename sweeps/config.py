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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator

from model.settings import Settings, setting
from pipeline.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    read_yaml_mapping,
    updated,
    validate_section,
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


class SamplerConfig(Settings):
    """The Optuna sampler that proposes configurations.

    Args:
        name: ``tpe`` (default), ``random``, ``gp``, ``qmc`` or ``cmaes``.
        seed: seed of the sampler (``null``: nondeterministic).
        options: keyword arguments of the sampler class (``n_startup_trials``…).
    """

    name: Literal["tpe", "random", "gp", "qmc", "cmaes"] = setting("tpe", "the Optuna sampler")
    seed: int | None = setting(0, "seed of the sampler (null: nondeterministic)")
    options: dict[str, Any] = setting({}, "keyword arguments of the sampler class")

    @field_validator("name")
    @classmethod
    def _installed(cls, name: str) -> str:
        needs = SAMPLERS[name][1]
        if needs and importlib.util.find_spec(needs) is None:
            raise ValueError(f"{name!r} needs the {needs!r} package: pip install {needs}")
        return name

    def create(self):
        """The ``optuna.samplers`` instance."""
        import optuna

        cls = getattr(optuna.samplers, SAMPLERS[self.name][0])
        try:
            return cls(seed=self.seed, **self.options)
        except TypeError as exc:
            raise ConfigError(f"sweep.sampler.options: {exc}") from exc


class SchedulerConfig(Settings):
    """The Ray Tune trial scheduler.

    Args:
        name: ``asha`` (stop trials that fall behind after the first tasks) or
            ``fifo`` (run every trial to its last task).
        grace_period: tasks every trial runs before ASHA may stop it. The default 2
            judges a trial once its memory is in play: the accuracy after the first
            task does not depend on ``lamb``/``lame`` at all.
        reduction_factor: ASHA keeps the best 1/``reduction_factor`` at each rung.
    """

    name: Literal["asha", "fifo"] = setting("asha", "the Ray Tune trial scheduler")
    grace_period: int = setting(2, "tasks every trial runs before ASHA may stop it", ge=1)
    reduction_factor: float = setting(2.0, "ASHA keeps the best 1/reduction_factor at each rung", gt=1.0)


class TrialResources(Settings):
    """What one trial reserves on the Ray cluster (its stages run inside it).

    Args:
        cpu: CPUs (also the torch thread count of its stages).
        gpu: GPUs; a fraction (0.5) lets trials share a GPU.
    """

    cpu: float = setting(1.0, "CPUs of a trial", gt=0.0)
    gpu: float = setting(0.0, "GPUs of a trial; a fraction lets trials share a GPU", ge=0.0)

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, gpu: float) -> float:
        if gpu > 1 and gpu != int(gpu):
            raise ValueError(f"must be a whole number when above 1, got {gpu}")
        return gpu


class SweepConfig(Settings):
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

    name: str = setting("sweep", "the sweep's name: its directory, MLflow parent run and Optuna study")
    space: dict[str, Any] = setting({}, "parameter name -> range (see sweeps.space)")
    dir: str = setting("runs/sweeps", "where sweeps live (Ray Tune's storage_path)")
    num_samples: int = setting(8, "configurations to try", ge=1)
    max_concurrent: int = setting(2, "trials running at once", ge=1)
    seeds: list[int] | None = setting(None, "seeds every configuration runs (default: the run config's)")
    sampler: SamplerConfig = setting(SamplerConfig(), "the Optuna sampler")
    scheduler: SchedulerConfig = setting(SchedulerConfig(), "the Ray Tune scheduler")
    storage: str | None = setting(None, "SQLAlchemy URL of the Optuna study")
    study_name: str | None = setting(None, "Optuna study name (default: name)")
    resources_per_trial: TrialResources = setting(TrialResources(), "what one trial reserves")
    max_failures: int = setting(1, "retries of a trial whose worker failed", ge=0)
    enqueue: list[dict[str, Any]] = setting([], "configurations to evaluate first")
    reuse_actors: bool = setting(True, "run consecutive trials in the same worker process")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"must be a non-empty name without '/', got {name!r}")
        return name

    @field_validator("dir")
    @classmethod
    def _filesystem(cls, path: str) -> str:
        if "://" in path:
            raise ValueError(f"must be a filesystem path (trials write run directories there), got {path!r}")
        return path

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
            raise ValueError(f"must list distinct seeds, got {seeds}")
        return seeds


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
        """Where a trial's run directories live."""
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
        from pipeline.running.stages import method_of

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
        res = self.config.resources_per_trial
        return updated(self.base, {
            **self.space.updates(params),
            "output_dir": str(self.trial_dir(trial_id)),
            "seeds": self.seeds,
            "resources.executor": "local",
            "resources.cpus_per_stage": res.cpu,
            "resources.gpus_per_stage": res.gpu,
        })  # fmt: skip

    def best_config(self, params: dict[str, Any], seeds: list[int]) -> RunConfig:
        """The base config with ``params``: what ``inflora run`` re-runs with other seeds."""
        return updated(self.base, {**self.space.updates(params), "name": f"{self.name}-best", "seeds": seeds})


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
    cfg = validate_section(SweepConfig, section, "sweep")
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
