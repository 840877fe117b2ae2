"""Tiny sweeps for the tests: the tiny run config of tests/conftest.py plus a sweep section.

Import the fixtures into a test module (``from sweep_fixtures import tiny_sweep``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_OVERRIDES, tiny_config_dict

TINY_SPACE = {"rank": {"low": 1, "high": 8}, "lamb": {"low": 0.8, "high": 0.999}}


def tiny_sweep_dict(tmp_path: Path, checkpoint: Path, sweep: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    """A sweep mapping over the tiny run config (3 tasks, 3 epochs: seconds per trial)."""
    data = tiny_config_dict(tmp_path, checkpoint, **sections)
    data["sweep"] = {
        "name": "tiny-sweep",
        "dir": str(tmp_path / "sweeps"),
        "num_samples": 4,
        "max_concurrent": 2,
        "space": dict(TINY_SPACE),
        "sampler": {"name": "tpe", "seed": 0},
        "scheduler": {"name": "fifo"},
        **(sweep or {}),
    }
    return data


@pytest.fixture(scope="session")
def sweep_checkpoint(tmp_path_factory) -> Path:
    """The tiny ViT with its random initial weights (seeded).

    The sweep tests check orchestration, not accuracy: random features are enough for
    a trained head to beat one that is not, and skip the MNIST pretraining of
    ``tiny_checkpoint`` (seconds on an idle machine, minutes on a busy one).
    """
    import torch

    from model.backbone import create_backbone, save_backbone

    path = tmp_path_factory.mktemp("sweep_backbone") / "tiny_random.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_backbone(create_backbone("vit_tiny_patch16_224", overrides=TINY_OVERRIDES), path)
    return path


SWEEP_EXPERIMENTS = ("sweep-tests", "sweep-tests-resume")


@pytest.fixture(scope="session")
def sweep_mlflow_uri(tmp_path_factory) -> str:
    """One MLflow sqlite store for the sweep tests (creating its tables takes seconds).

    Its experiments keep their artifacts in the temporary directory too (MLflow's
    default, ``./mlruns``, would be the working directory).
    """
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    for name in SWEEP_EXPERIMENTS:
        client.create_experiment(name, artifact_location=(root / "artifacts" / name).as_uri())
    return uri


@pytest.fixture
def tiny_sweep(tmp_path, sweep_checkpoint, sweep_mlflow_uri):
    """Factory: ``tiny_sweep(sweep={"num_samples": 2}, train={"epochs": 1})`` → validated Sweep."""
    from sweeps.config import sweep_from_dict

    def make(sweep: dict[str, Any] | None = None, **sections: Any):
        sections.setdefault("tracking", {"experiment": "sweep-tests", "uri": sweep_mlflow_uri})
        return sweep_from_dict(tiny_sweep_dict(tmp_path, sweep_checkpoint, sweep, **sections))

    return make


def start_ray(num_cpus: int = 2) -> None:
    """A fresh local Ray cluster (no dashboard)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


@pytest.fixture
def ray_2cpus():
    """A fresh local Ray cluster with 2 CPUs, shut down after the test."""
    import ray

    start_ray(2)
    yield
    ray.shutdown()
