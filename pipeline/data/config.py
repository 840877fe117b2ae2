"""The ``data`` section of a run config: which task sequence, split how, read from where."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from model.settings import Settings, setting

from .base import SPLIT_FILE_DATASETS, available_datasets

__all__ = ["DataConfig"]


class DataConfig(Settings):
    """The task sequence.

    Args:
        name: registered data set (``digits``, ``mnist``, ``cifar100``, ``imagenet_r``…).
        root: folder of the data set files (not needed for the packaged offline sets).
        num_tasks: number of tasks; classes are split evenly.
        class_order: ``"seeded"`` (shuffled by the run's seed), ``"fixed"`` (label
            order) or an explicit list of every class.
        val_fraction: share of each class's training samples held out for validation.
        image_size: side of the square input images.
        max_train_per_class: cap on training samples per class (a harder protocol).
        test_fraction: share held out for testing, for data sets without an
            official test split (ImageNet-R): of each class, seeded by the run's
            seed, or of the whole pool in one draw from ``split_seed``.
        normalization: ``"backbone"`` (mean/std of the backbone's timm
            ``pretrained_cfg``), ``"none"`` (images in [0, 1], as the reference
            code feeds its in21k ViT) or ``"imagenet"``.
        num_workers: DataLoader worker processes (the device path keeps them across a stage's epochs).
        pipeline: ``"pil"`` (torchvision transforms per image on the host, the
            reference's) or ``"device"`` (decode once into a shared cache, crop
            on the host, resize, flip and normalise batches on the compute
            device; :mod:`pipeline.data.device_loader`). Data sets of ready
            tensors (``digits``, ``mnist``) give the same batches either way.
        cache_dir: where ``pipeline: device`` keeps decoded images (default
            ``$INFLORA_CACHE_DIR`` or ``~/.cache/inflora/decoded``), shared by the runs of a node.
        cache_max_side: cap on the longer side of cached training images
            (``None``: native resolution, crops as in the PIL path).
        options: data-set-specific settings.
        split_file: a declared training list — a CODA-Prompt-style YAML file
            (``data:`` image paths, ``targets:`` labels) or a text file of
            ``<path> <label>`` lines; it replaces the data set's own training pool.
        split_file_test: the matching test list; without it the test split is
            held out of ``split_file``'s pool (``test_fraction``).
        split_prefix: leading part of every listed path (``data/imagenet-r/``)
            stripped before the path is resolved against ``root``.
        split_seed: draw the held-out test split once from this seed, as one
            ``test_fraction`` draw over the whole pool (InfLoRA's official
            ImageNet-R protocol, ``torch.utils.data.random_split``), so that every
            run seed shares one split; ``None`` holds out ``test_fraction`` of each
            class, seeded by the run's seed.
    """

    name: str = setting("digits", "registered data set")
    root: str | None = setting(None, "folder of the data set files")
    num_tasks: int = setting(5, "number of tasks; classes are split evenly", ge=1)
    class_order: str | list[int] = setting("seeded", "'seeded', 'fixed' or an explicit list of every class")
    val_fraction: float = setting(0.1, "share of each class's training samples held out for validation", ge=0.0, lt=1.0)
    image_size: int = setting(16, "side of the square input images", ge=1)
    max_train_per_class: int | None = setting(None, "cap on training samples per class", ge=1)
    test_fraction: float = setting(0.2, "share held out for testing (data sets without a test split)", gt=0.0, lt=1.0)
    normalization: Literal["backbone", "none", "imagenet"] = setting("backbone", "input normalisation")
    num_workers: int = setting(0, "DataLoader worker processes", ge=0, affects_result=False)
    pipeline: Literal["pil", "device"] = setting("pil", "'pil': transforms per image on the host; 'device': decoded once, augmented on the device")
    cache_dir: str | None = setting(None, "where the device path keeps decoded images", affects_result=False)
    cache_max_side: int | None = setting(None, "cap on the longer side of cached training images", ge=1)
    options: dict[str, Any] = setting({}, "data-set-specific settings")
    split_file: str | None = setting(None, "a declared training list (replaces the data set's training pool)")
    split_file_test: str | None = setting(None, "the matching test list")
    split_prefix: str | None = setting(None, "leading part of every listed path, stripped")
    split_seed: int | None = setting(None, "draw the held-out test split once from this seed")

    def result_view(self) -> dict[str, Any]:
        view = super().result_view()
        if self.pipeline == "pil":  # runs from before the device path keep their result keys
            view.pop("pipeline")
            view.pop("cache_max_side")
            if self.num_workers:
                # The PIL path's random transforms are drawn by the loader's workers, each from
                # its own seed (base + worker id), batches dealt round robin: N workers draw other
                # crops than M. So N > 0 keys its results (0, the default, keeps the old keys);
                # the device path seeds its crops per batch and never depends on it.
                view["num_workers"] = self.num_workers
        return view

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in available_datasets():
            raise ValueError(f"unknown data set {name!r}; known: {available_datasets()}")
        return name

    @field_validator("class_order", mode="before")
    @classmethod
    def _order(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("seeded", "fixed"):
            raise ValueError(f"must be 'seeded', 'fixed' or a list of classes, got {value!r}")
        return value

    @model_validator(mode="after")
    def _split_files(self) -> "DataConfig":
        if self.split_file is None and (self.split_file_test is not None or self.split_prefix is not None):
            raise ValueError("data.split_file_test and data.split_prefix need data.split_file (the training list)")
        if self.split_file is not None and self.name not in SPLIT_FILE_DATASETS:
            raise ValueError(
                f"data.split_file lists image files; data set {self.name!r} is not read from image files "
                f"(use one of {sorted(SPLIT_FILE_DATASETS)})"
            )
        return self
