"""Checks that run before anything is created: no run directory, no MLflow run.

Everything that can be known from the config alone is checked here, so that a
bad value is one line naming its key instead of a FAILED MLflow run and a stage
traceback later: the backbone's shape (built on the ``meta`` device: no memory,
no weights) against the method's settings bounded by its width (a LoRA rank),
its LoRA blocks and ``data.image_size``; the
checkpoint's tensor shapes against that architecture; the class count of the
known data sets against ``data.num_tasks``; paths; seeds; and whether the
tracking server answers (``tracking.offline`` lets a run start without it).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.settings import WIDTH, searchable_fields

from ..config import BackboneConfig, ConfigError, RunConfig, check_timm_name, flatten
from .spec import RunSpec

__all__ = ["preflight", "check_config", "check_paths", "check_local_resources", "resume_conflicts", "architecture", "KNOWN_CLASS_COUNTS"]

_logger = logging.getLogger(__name__)

KNOWN_CLASS_COUNTS = {"digits": 10, "mnist": 10, "cifar100": 100, "imagenet_r": 200, "domainnet": 345}
"""Classes of the data sets whose size is fixed (``image_folder`` depends on its files)."""


@functools.lru_cache(maxsize=8)
def architecture(backbone: BackboneConfig) -> dict[str, Any]:
    """Shape facts of the timm model (``width``, ``depth``, ``img_size``, tensor ``shapes``), built
    once per backbone on the meta device: no memory, no weights.

    Raises:
        ConfigError: timm has no model ``backbone.name``, or ``backbone.overrides`` do not fit it.
    """
    import timm
    import torch

    check_timm_name(backbone)
    kwargs = {**backbone.overrides, "num_classes": 0}
    try:
        with torch.device("meta"):
            model = timm.create_model(backbone.name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"backbone.overrides {sorted(backbone.overrides)} do not fit {backbone.name!r}: {exc}") from None
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    return {
        "width": int(getattr(model, "embed_dim", 0) or model.num_features),
        "depth": len(model.blocks) if hasattr(model, "blocks") else 0,
        "img_size": tuple(img_size) if img_size is not None else None,
        "shapes": {k: tuple(v.shape) for k, v in model.state_dict().items()},
    }


def _checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes of a ``.safetensors`` file from its header (other formats: ``None``)."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # not a safetensors file
        raise ConfigError(f"backbone.checkpoint {path} is corrupt or not a safetensors file: {exc}") from None


def check_paths(cfg: RunConfig) -> None:
    """The output and data folders (file-system look-ups only: the first, cheapest checks)."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} is a file, not a directory")
    if cfg.data.root is not None:
        root = Path(cfg.data.root)
        if not root.is_dir():
            raise ConfigError(f"data.root {cfg.data.root} does not exist (or is not a directory)")
        if not any(root.iterdir()):  # a mount that is not there yet, or a download not unpacked
            raise ConfigError(
                f"data.root {root} is empty; expected the files of data set {cfg.data.name!r} there "
                "(docs/datasets.md shows each layout)"
            )


def check_local_resources(cfg: RunConfig) -> None:
    """The in-process executor runs stages on this machine: a GPU asked for must be here.

    (The Ray executor compares requests with the cluster's nodes: :mod:`pipeline.running.resources`.)
    """
    res = cfg.resources
    if res.executor != "local" or res.gpus_per_stage <= 0:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"resources.gpus_per_stage={res.gpus_per_stage:g}: the local executor runs every stage in this process, "
            "and this machine has no GPU that torch can use; set resources.gpus_per_stage: 0 to train on the CPU, "
            "or run where a GPU is"
        )


def check_config(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` (one line naming the key) for what the config alone shows is wrong."""
    check_paths(cfg)
    check_local_resources(cfg)
    classes = KNOWN_CLASS_COUNTS.get(cfg.data.name)
    if classes is not None and isinstance(cfg.data.class_order, str):
        if cfg.data.num_tasks > classes:
            raise ConfigError(f"data.num_tasks={cfg.data.num_tasks} is more than the {classes} classes of {cfg.data.name!r}")
        if classes % cfg.data.num_tasks:  # allowed (the split is deterministic), but never silent
            sizes = [classes // cfg.data.num_tasks + (t < classes % cfg.data.num_tasks) for t in range(cfg.data.num_tasks)]
            _logger.warning(
                "data.num_tasks=%d does not divide the %d classes of %r: tasks of %s classes (even splits: num_tasks in %s)",
                cfg.data.num_tasks, classes, cfg.data.name, sizes, [n for n in range(1, min(classes, 50) + 1) if classes % n == 0],
            )
    _check_backbone(cfg)


def _check_backbone(cfg: RunConfig) -> None:
    b = cfg.backbone
    arch = architecture(b)
    if arch["img_size"] is not None and arch["img_size"] != (cfg.data.image_size, cfg.data.image_size):
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} differs from the backbone's img_size {arch['img_size'][0]} "
            f"({b.name}); set data.image_size: {arch['img_size'][0]} or backbone.overrides.img_size: {cfg.data.image_size}"
        )
    method, where = cfg.method.config, f"method.{cfg.method.name}"
    for name, search in searchable_fields(type(method)).items():
        if search.bound == WIDTH and getattr(method, name) > arch["width"]:
            raise ConfigError(f"{where}.{name}={getattr(method, name)} is larger than the backbone's width {arch['width']} ({b.name})")
    blocks = getattr(method, "blocks", None)
    depth = arch["depth"]
    if isinstance(blocks, int) and not isinstance(blocks, bool) and blocks > depth:
        raise ConfigError(f"{where}.blocks={blocks} is more than the backbone's {depth} blocks")
    if isinstance(blocks, list) and any(not 0 <= i < depth for i in blocks):
        raise ConfigError(f"{where}.blocks={blocks} holds indices outside 0..{depth - 1} (the backbone has {depth} blocks)")
    if b.checkpoint is not None and Path(b.checkpoint).is_file():
        shapes = _checkpoint_shapes(Path(b.checkpoint))
        if shapes is not None:
            wrong = [k for k, shape in arch["shapes"].items() if k in shapes and shapes[k] != shape]
            missing = [k for k in arch["shapes"] if k not in shapes]
            if wrong or missing:
                k = (wrong or missing)[0]
                found = f"{shapes[k]} in the file" if k in shapes else "absent from the file"
                raise ConfigError(
                    f"backbone.checkpoint {b.checkpoint} does not fit {b.name} with backbone.overrides {b.overrides}: "
                    f"{k} is {arch['shapes'][k]} in the model, {found}"
                )


def resume_conflicts(recorded: RunConfig, requested: RunConfig) -> list[str]:
    """Config keys whose values differ between a run directory's config and the one asked for,
    among the settings that change results (``affects_result``: not seeds, paths, resources, tracking)."""
    a, b = flatten(json.loads(recorded.result_json)), flatten(json.loads(requested.result_json))
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_resume(specs: Sequence[RunSpec], requested: RunConfig) -> None:
    """A ``--resume`` given together with a config or ``--set`` must not change the run."""
    for spec in specs:
        differ = resume_conflicts(spec.config, requested)
        if differ:
            have, ask = flatten(json.loads(spec.config.result_json)), flatten(json.loads(requested.result_json))
            shown = ", ".join(f"{k} ({have.get(k)!r} in the run, {ask.get(k)!r} asked)" for k in differ[:6])
            raise ConfigError(
                f"--resume {spec.run_dir}: the run was made with another config: {shown}; "
                "drop --resume to start a new run with these settings"
            )


def preflight(specs: Sequence[RunSpec]) -> None:
    """Every check that needs nothing to exist yet, for the runs about to start."""
    from ..tracking.offline import probe_tracking_uri, unreachable_message
    from ..tracking.tracker import resolve_tracking_uri

    for spec in specs:
        if spec.seed < 0:
            raise ConfigError(f"seeds must be non-negative integers, got {spec.seed}")
    configs = list(dict.fromkeys(spec.config for spec in specs))  # each distinct config once
    # cheapest first: paths, then the tracking server (seconds at most), then what needs torch and timm
    for cfg in configs:
        check_paths(cfg)
    uris = {resolve_tracking_uri(c.tracking) for c in configs if c.tracking.enabled and not c.tracking.offline}
    for uri in uris:
        reason = probe_tracking_uri(uri)
        if reason is not None:
            raise ConfigError(unreachable_message(uri, reason))
    for cfg in configs:
        check_config(cfg)
