"""Create a missing CPU-scale backbone checkpoint from its pretraining recipe.

The paper's backbone is ViT-B/16 pretrained on ImageNet-21k. Where no weights
can be downloaded (the CPU demo), ``backbone.pretrain`` names a data set that is
disjoint from the continual tasks (MNIST for the scikit-learn digits demo), and
the tiny ViT is pretrained on it here, deterministically, before the runs start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model.backbone import BackboneError, create_backbone, save_backbone
from model.pretrain import pretrain_classifier

from ..config import BackboneConfig, DataConfig
from ..data import load_dataset

__all__ = ["cache_dir", "ensure_backbone", "pretrain_backbone", "recipe_hash"]

_logger = logging.getLogger(__name__)


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(dataset, "tensors"):
        return dataset.tensors[0], dataset.tensors[1]
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.as_tensor(labels)


def pretrain_backbone(backbone: BackboneConfig, continual_data: DataConfig, progress: bool = True) -> dict:
    """Pretrain ``backbone`` by its recipe and write ``backbone.checkpoint``; returns the report."""
    recipe = backbone.pretrain
    if recipe is None or backbone.checkpoint is None:
        raise BackboneError("backbone.pretrain and backbone.checkpoint are both needed to pretrain")
    if recipe.dataset == continual_data.name:
        raise BackboneError(
            f"backbone.pretrain.dataset {recipe.dataset!r} is the continual data set itself: "
            "pretraining on the tasks' data would leak them; use a disjoint data set"
        )
    image_size = int(backbone.overrides.get("img_size", continual_data.image_size))
    source = load_dataset(DataConfig(name=recipe.dataset, image_size=image_size, num_tasks=1))
    train, test = _stack(source.train), _stack(source.test)
    model = create_backbone(backbone.name, pretrained=False, overrides=backbone.overrides, init_seed=recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=recipe.epochs, desc=f"pretrain {backbone.name} on {recipe.dataset}", unit="epoch")

    def on_epoch_end(epoch: int, loss: float, acc: float) -> None:
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.3f}", test_acc=f"{acc:.3f}")
            bar.update(1)

    started = time.perf_counter()
    result = pretrain_classifier(
        model,
        source.num_classes,
        train,
        test,
        epochs=recipe.epochs,
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        weight_decay=recipe.weight_decay,
        generator=generator,
        on_epoch_end=on_epoch_end,
    )
    if bar is not None:
        bar.close()
    report = {
        "backbone": backbone.name,
        "overrides": backbone.overrides,
        "pretrain_dataset": recipe.dataset,
        "train_samples": len(train[1]),
        "recipe": {k: getattr(recipe, k) for k in ("epochs", "lr", "batch_size", "weight_decay", "seed")},
        **result,
        "wall_time_s": time.perf_counter() - started,
    }
    path = Path(backbone.checkpoint)
    save_backbone(model, path, metadata={"report": json.dumps(report)})
    path.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    _logger.info("pretrained backbone written to %s (test accuracy %.3f)", path, result["test_accuracy"])
    return report


def cache_dir() -> Path:
    """Where pretrained backbones are kept for this user: ``$INFLORA_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/inflora``, else ``~/.cache/inflora``."""
    if os.environ.get("INFLORA_CACHE_DIR"):
        return Path(os.environ["INFLORA_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "inflora"


def recipe_hash(backbone: BackboneConfig, continual_data: DataConfig) -> str:
    """SHA-256 (16 hex digits) of everything the pretrained weights depend on: the
    architecture, the recipe, the input size and the torch/timm versions."""
    import timm

    recipe = backbone.pretrain
    facts = {
        "name": backbone.name,
        "overrides": backbone.overrides,
        "image_size": int(backbone.overrides.get("img_size", continual_data.image_size)),
        "recipe": {k: getattr(recipe, k) for k in ("dataset", "epochs", "lr", "batch_size", "weight_decay", "seed")},
        "torch": torch.__version__,
        "timm": timm.__version__,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _copy(source: Path, target: Path) -> None:
    """Copy atomically (a reader never sees half a file; two writers race harmlessly)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def ensure_backbone(
    backbone: BackboneConfig, continual_data: DataConfig, progress: bool = True, notify: Callable[[str], None] | None = None
) -> dict | None:
    """Make sure ``backbone.checkpoint`` exists: copy it from the user's cache of pretrained
    backbones (keyed by :func:`recipe_hash`), or pretrain it by its recipe and keep it there.

    A demo run from another directory thus reuses the weights instead of pretraining
    them again (minutes); the copy is byte-identical, so its SHA-256 is the same.

    Args:
        notify: told, in one line, where the checkpoint came from (``print`` in the CLI).

    Raises:
        BackboneError: the checkpoint is missing and there is no recipe.
    """
    if backbone.checkpoint is None or Path(backbone.checkpoint).is_file():
        return None
    if backbone.pretrain is None:
        raise BackboneError(
            f"backbone checkpoint not found: {backbone.checkpoint} (set backbone.checkpoint to an existing "
            "weights file, or add a backbone.pretrain recipe to create it)"
        )
    say = notify or _logger.info
    target = Path(backbone.checkpoint)
    key = recipe_hash(backbone, continual_data)
    cached = cache_dir() / "backbones" / f"{target.stem}-{key}{target.suffix}"
    if cached.is_file():
        _copy(cached, target)
        if cached.with_suffix(".json").is_file():
            _copy(cached.with_suffix(".json"), target.with_suffix(".json"))
        say(f"backbone: {target} copied from the cache {cached} (pretrained earlier by the same backbone.pretrain recipe)")
        return None
    recipe = backbone.pretrain
    say(f"backbone: {target} is missing; pretraining it on {recipe.dataset} for {recipe.epochs} epochs "
        f"(backbone.pretrain; once per recipe: kept in {cached.parent})")
    report = pretrain_backbone(backbone, continual_data, progress=progress)
    _copy(target, cached)
    _copy(target.with_suffix(".json"), cached.with_suffix(".json"))
    say(f"backbone: wrote {target} in {report['wall_time_s']:.0f} s (test accuracy {report['test_accuracy']:.3f} "
        f"on {recipe.dataset}); cached as {cached}")
    return report
