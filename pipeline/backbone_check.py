"""The backbone of a run is recorded (SHA-256 of its weights) and checked by every stage.

A run rebuilds its backbone in every stage, in whichever process runs the
stage. If the weights could differ between stages (a checkpoint file replaced
mid-run, a random initialisation drawn from a process's global generator), the
run would mix two networks without a word. The driver records the hash in
``run.json`` when the run starts; each stage compares the backbone it built
with it and stops, naming both, if they differ.
"""

from __future__ import annotations

import functools
import json

from torch import nn

from model.backbone import create_backbone, weights_sha256

from .config import BackboneConfig, config_to_dict
from .state import RunDir, RunStateError

__all__ = ["backbone_sha256", "record_backbone_hash", "check_backbone_hash"]

_KEY = "backbone_sha256"


@functools.lru_cache(maxsize=4)
def _hash_of(backbone_json: str) -> str:
    b = json.loads(backbone_json)
    model = create_backbone(b["name"], pretrained=b["pretrained"], checkpoint=b["checkpoint"], overrides=b["overrides"],
                            reset_final_norm=b.get("reset_final_norm", False), init_seed=b.get("init_seed", 0))  # fmt: skip
    return weights_sha256(model)


def backbone_sha256(backbone: BackboneConfig) -> str:
    """SHA-256 of the weights ``backbone`` builds (cached per process)."""
    return _hash_of(json.dumps(config_to_dict(backbone), sort_keys=True))


def record_backbone_hash(run_dir: RunDir, backbone: BackboneConfig) -> str:
    """Write the backbone's hash into ``run.json`` on the run's first start; on a resume, check it."""
    record = run_dir.read_json("run.json")
    digest = backbone_sha256(backbone)
    if record.get(_KEY) is None:
        run_dir.write_json("run.json", {**record, _KEY: digest})
    elif record[_KEY] != digest:
        raise RunStateError(_mismatch(run_dir, backbone, record[_KEY], digest))
    return digest


def check_backbone_hash(run_dir: RunDir, backbone: BackboneConfig, model: nn.Module) -> None:
    """Raise :class:`RunStateError` if ``model`` is not the backbone ``run.json`` recorded (no record: no check).

    A model object is hashed once per process (stages reuse a cached backbone).
    """
    expected = run_dir.read_json("run.json").get(_KEY)
    if expected is None:
        return
    seen = _hashed.get(id(model))
    actual = seen[1] if seen is not None and seen[0] is model else weights_sha256(model)
    _hashed[id(model)] = (model, actual)  # holding the model keeps its id unique
    if actual != expected:
        raise RunStateError(_mismatch(run_dir, backbone, expected, actual))


_hashed: dict[int, tuple[nn.Module, str]] = {}


def _mismatch(run_dir: RunDir, backbone: BackboneConfig, expected: str, actual: str) -> str:
    source = f"backbone.checkpoint {backbone.checkpoint}" if backbone.checkpoint else (
        "timm's pretrained weights" if backbone.pretrained else f"random weights of backbone.init_seed={backbone.init_seed}")
    return (
        f"{run_dir.path}: the backbone ({source}) has SHA-256 {actual[:16]}…, not the {expected[:16]}… this run started with; "
        "restore the original weights, or start a new run (another output_dir or name)"
    )
