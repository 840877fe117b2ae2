"""What a run is, and what its finished stages left: readable without torch, timm, Ray or MLflow.

:class:`RunSpec` (a config, a seed, a run directory), :func:`spec_from_run_dir` (the run of an
existing directory) and :func:`read_result` (the typed :class:`~model.methods.results.StepResult`
of a finished stage, its marker checked against its checksum) are what a reader of results needs:
a report, a notebook, a sweep summary. The stage runner (:mod:`pipeline.running.stages`, which imports
torch) builds on them and re-exports ``RunSpec`` and ``read_result``; :mod:`pipeline.running.runner`
re-exports ``spec_from_run_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.methods.results import StepResult

from ..config import RunConfig, config_from_dict
from .state import RunDir, StageKey

__all__ = ["RunSpec", "spec_from_run_dir", "read_result"]


@dataclass(frozen=True)
class RunSpec:
    """A run: a configuration, a seed, and the directory its state lives in."""

    config: RunConfig
    seed: int
    run_dir: str

    @property
    def label(self) -> str:
        return f"{self.config.name}/{self.config.method.name}/seed{self.seed}"


def read_result(run_dir: RunDir, key: StageKey) -> StepResult:
    """The typed result of a finished stage (its marker checked against its checksum)."""
    return StepResult.from_dict(run_dir.read_done(key))


def spec_from_run_dir(path: str) -> RunSpec:
    """The spec of an existing run directory (for ``--resume``, and for readers of its results)."""
    run_dir = RunDir(path)
    if not run_dir.file(RunDir.RUN).is_file():
        raise FileNotFoundError(f"{run_dir.path} is not a run directory (no run.json)")
    record = run_dir.read_json(RunDir.RUN)
    return RunSpec(config_from_dict(record["config"]), int(record["seed"]), str(run_dir.path))
