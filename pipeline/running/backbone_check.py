"""The backbone of a run is recorded (SHA-256 of its weights) and checked by every stage.

A run rebuilds its backbone in every stage, in whichever process runs the
stage. If the weights could differ between stages (a checkpoint file replaced
mid-run, a random initialisation drawn from a process's global generator), the
run would mix two networks without a word. The driver records the hash in
``run.json`` when the run starts; each stage compares the backbone it built
with it and stops, naming both, if they differ.

A process builds a backbone once (:func:`cached_backbone`) and hashes that model
object once: the driver's record and the stages of an in-process executor share it.
"""

from __future__ import annotations

import functools

from torch import nn

from model.backbone import create_backbone, weights_sha256

from ..config import BackboneConfig
from .state import RunDir, RunStateError

__all__ = ["cached_backbone", "backbone_sha256", "record_backbone_hash", "check_backbone_hash"]

_KEY = "backbone_sha256"


@functools.lru_cache(maxsize=2)
def cached_backbone(b: BackboneConfig) -> nn.Module:
    """The backbone ``b`` describes, built once per process (keyed by the section's canonical JSON).

    Callers copy it before changing it.
    """
    return create_backbone(b.name, pretrained=b.pretrained, checkpoint=b.checkpoint, overrides=b.overrides,
                           reset_final_norm=b.reset_final_norm, init_seed=b.init_seed)  # fmt: skip


def backbone_sha256(backbone: BackboneConfig) -> str:
    """SHA-256 of the weights ``backbone`` builds (built and hashed once per process)."""
    return _model_sha256(cached_backbone(backbone))


def _model_sha256(model: nn.Module) -> str:
    seen = _hashed.get(id(model))
    actual = seen[1] if seen is not None and seen[0] is model else weights_sha256(model)
    _hashed[id(model)] = (model, actual)  # holding the model keeps its id unique
    return actual


def record_backbone_hash(run_dir: RunDir, backbone: BackboneConfig) -> str:
    """Write the backbone's hash into ``run.json`` on the run's first start; on a resume, check it."""
    record = run_dir.read_json(RunDir.RUN)
    digest = backbone_sha256(backbone)
    if record.get(_KEY) is None:
        run_dir.write_json(RunDir.RUN, {**record, _KEY: digest})
    elif record[_KEY] != digest:
        raise RunStateError(_mismatch(run_dir, backbone, record[_KEY], digest))
    return digest


def check_backbone_hash(run_dir: RunDir, backbone: BackboneConfig, model: nn.Module) -> None:
    """Raise :class:`RunStateError` if ``model`` is not the backbone ``run.json`` recorded (no record: no check).

    A model object is hashed once per process (stages reuse a cached backbone).
    """
    expected = run_dir.read_json(RunDir.RUN).get(_KEY)
    if expected is None:
        return
    actual = _model_sha256(model)
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
