"""Backbone factory over :func:`timm.create_model`.

Any timm Vision Transformer name works. Weights come from one of:

* ``pretrained=True`` — timm's own pretrained weights (hub download, not possible offline);
* ``checkpoint=PATH`` — a local file: ``.safetensors``, a PyTorch state dict
  (``.pth``/``.pt``/``.bin``, loaded with ``weights_only=True``) or the original
  JAX ``.npz`` of the ViT papers (loaded by timm's own ``load_pretrained``).

The classifier head is removed (``num_classes=0``): InfLoRA keeps its own
per-task heads on the final CLS feature.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

__all__ = ["BackboneError", "create_backbone", "load_state_dict_file", "replace_final_norm", "save_backbone", "weights_sha256"]

_logger = logging.getLogger(__name__)

_HEAD_PREFIXES = ("head.", "fc_norm.weight_head")  # classifier weights we never load


class BackboneError(ValueError):
    """The backbone cannot be built: unknown name, missing or corrupt checkpoint."""


def _known_vit_names() -> list[str]:
    return sorted(set(timm.list_models("vit_*")) | set(timm.list_models("test_vit*")))


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``weights_only`` torch file.

    Raises:
        BackboneError: the file is missing, unreadable, or not a flat tensor dict.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"backbone checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt archive, truncated file, pickle with code
        raise BackboneError(f"backbone checkpoint {path} is corrupt or not a weights file: {exc}") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"backbone checkpoint {path} does not hold a tensor state dict")
    return dict(state)


def create_backbone(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    reset_final_norm: bool = False,
    init_seed: int = 0,
) -> nn.Module:
    """Build a headless timm ViT, optionally loading weights.

    Args:
        name: timm model name, e.g. ``vit_base_patch16_224.augreg_in21k``.
        pretrained: load timm's pretrained weights for ``name`` (needs the hub).
        checkpoint: local weights file; takes precedence over ``pretrained``.
        overrides: keyword arguments for the timm constructor (``img_size``,
            ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``in_chans``…).
        reset_final_norm: after loading the weights, replace the final norm by a
            fresh :class:`torch.nn.LayerNorm` (see :func:`replace_final_norm`).
        init_seed: seed of the random initialisation (timm draws it from torch's
            global generator, forked here so the weights depend on this seed only).

    Returns:
        The model in ``eval()`` mode with every parameter frozen.
    """
    architecture = name.split(".")[0]
    if not timm.is_model(architecture):
        import difflib

        close = difflib.get_close_matches(architecture, _known_vit_names(), n=6, cutoff=0.75)
        raise BackboneError(f"unknown timm model {name!r}" + (f"; similar names: {close}" if close else ""))
    kwargs = dict(overrides or {})
    kwargs["num_classes"] = 0
    use_hub = pretrained and checkpoint is None
    try:
        with torch.random.fork_rng(devices=[]):  # the weights are a function of init_seed, not of what ran before
            torch.manual_seed(init_seed)
            model = timm.create_model(name, pretrained=use_hub, **kwargs)
    except TypeError as exc:
        raise BackboneError(f"bad backbone overrides {sorted(kwargs)} for {name!r}: {exc}") from exc
    except Exception as exc:  # the hub download failed (offline, proxy, no such weights)
        if not use_hub:
            raise
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BackboneError(
            f"backbone.pretrained: the weights of {name!r} could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {first}); set backbone.checkpoint to a local weights file instead"
        ) from None
    if not hasattr(model, "blocks"):
        raise BackboneError(f"{name!r} is not a Vision Transformer (no .blocks); InfLoRA wraps ViT attention")
    if checkpoint is not None:
        _load_checkpoint(model, Path(checkpoint))
    if reset_final_norm:
        replace_final_norm(model)
    model.eval()
    model.requires_grad_(False)
    return model


def replace_final_norm(model: nn.Module) -> nn.LayerNorm:
    """Swap the ViT's final ``norm`` for a fresh ``nn.LayerNorm(num_features)`` (weight 1, bias 0).

    The reference's ``InfLoRA_CA1`` (``methods/inflora_ca1.py``, used by
    ``configs/cifar100_infloraca.json``) does this on CIFAR-100 —
    ``del image_encoder.norm; image_encoder.norm = nn.LayerNorm(768)`` — which
    discards the pretrained affine parameters and uses PyTorch's default eps
    (1e-5, timm's ViT uses 1e-6). The fresh norm is frozen like the rest of the
    backbone (the reference trains only the LoRA ``up`` and the heads), so it is
    the same in every stage that rebuilds the network.

    Raises:
        BackboneError: the model has no final LayerNorm ``norm`` (e.g. it pools
            with ``fc_norm``).
    """
    old = getattr(model, "norm", None)
    if not isinstance(old, nn.LayerNorm):
        raise BackboneError(f"backbone.reset_final_norm: the model's final norm is {type(old).__name__}, not a LayerNorm")
    fresh = nn.LayerNorm(int(model.num_features)).to(device=old.weight.device, dtype=old.weight.dtype)  # type: ignore[arg-type]
    model.norm = fresh
    return fresh


def _load_checkpoint(model: nn.Module, path: Path) -> None:
    if path.suffix == ".npz":
        if not path.is_file():
            raise BackboneError(f"backbone checkpoint not found: {path}")
        try:
            model.load_pretrained(str(path))  # timm's loader for the original JAX weights
        except Exception as exc:
            raise BackboneError(f"cannot load JAX checkpoint {path}: {exc}") from exc
        return
    state = load_state_dict_file(path)
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: weights of another architecture
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:300])
        raise BackboneError(f"checkpoint {path} does not match the backbone (check backbone.name/overrides): {first}") from None
    missing = [k for k in result.missing_keys if not k.startswith(_HEAD_PREFIXES)]
    if missing or result.unexpected_keys:
        raise BackboneError(
            f"checkpoint {path} does not match the backbone: missing {missing[:5]}"
            f"{'…' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
        )
    _logger.info("loaded backbone weights from %s", path)


def save_backbone(model: nn.Module, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> None:
    """Write the backbone's weights (no head) as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if not k.startswith(_HEAD_PREFIXES)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=dict(metadata or {}))
    os.replace(tmp, path)


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes, in name order).

    Recorded in a run's ``run.json`` and checked by every stage: a backbone that
    changed under a run (another checkpoint file, another initialisation) is found.
    """
    import hashlib

    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
