"""Run configuration: YAML validated into frozen dataclasses at the edge.

Unknown keys and bad values are rejected with a :class:`ConfigError` that names
the key (``train.lr``) and what is allowed. Relative paths are resolved against
the directory the command runs in, once, here: Ray workers do not share the
driver's working directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from model.methods import LoRASpec, MethodConfig, available_methods, method_config_class
from model.training import TrainSpec

__all__ = [
    "ConfigError",
    "BackboneConfig",
    "PretrainConfig",
    "DataConfig",
    "ResourcesConfig",
    "TrackingConfig",
    "RunConfig",
    "MethodSection",
    "load_config",
    "updated",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "build_section",
    "read_yaml_mapping",
]


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key."""


def similar_names(name: str, known: list[str], n: int = 6) -> list[str]:
    """The known names closest to a mistyped one (``difflib``), nearest first."""
    import difflib

    return difflib.get_close_matches(name, known, n=n, cutoff=0.75)


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class PretrainConfig:
    """How to pretrain the CPU-scale backbone when its checkpoint is missing.

    The data set must be disjoint from the continual tasks' data (see README).
    """

    dataset: str = "mnist"
    epochs: int = 12
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"backbone.pretrain.epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"backbone.pretrain.lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"backbone.pretrain.batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class BackboneConfig:
    """Which ViT and which weights.

    Args:
        name: timm model name (``vit_base_patch16_224.augreg_in21k`` in the paper).
        pretrained: download timm's weights for ``name`` (needs the hub).
        checkpoint: local weights file; wins over ``pretrained``.
        overrides: timm constructor arguments (``img_size``, ``depth``…).
        pretrain: recipe to create ``checkpoint`` when it is missing (CPU demo).
        reset_final_norm: replace the backbone's final LayerNorm by a fresh,
            frozen ``nn.LayerNorm`` (weight 1, bias 0, eps 1e-5), as the reference's
            ``InfLoRA_CA1`` does on CIFAR-100 (``methods/inflora_ca1.py``).
        init_seed: seed of the random weights when neither ``pretrained`` nor
            ``checkpoint`` gives them (the backbone is a function of the config).
    """

    name: str = "vit_base_patch16_224.augreg_in21k"
    pretrained: bool = True
    checkpoint: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrain: PretrainConfig | None = None
    reset_final_norm: bool = False
    init_seed: int = 0

    def __post_init__(self) -> None:
        import timm

        if self.init_seed < 0:
            raise ValueError(f"backbone.init_seed must be >= 0, got {self.init_seed}")

        if not self.name:
            raise ValueError("backbone.name must be a timm model name")
        if not timm.is_model(self.name.split(".")[0]):
            hint = similar_names(self.name.split(".")[0], timm.list_models())
            raise ValueError(f"backbone.name: unknown timm model {self.name!r}" + (f"; similar names: {hint}" if hint else ""))
        if self.pretrain is not None and self.checkpoint is None:
            raise ValueError("backbone.pretrain needs backbone.checkpoint: the path the pretrained weights go to")


@dataclass(frozen=True)
class DataConfig:
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
        num_workers: DataLoader worker processes.
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

    name: str = "digits"
    root: str | None = None
    num_tasks: int = 5
    class_order: Union[str, list[int]] = "seeded"
    val_fraction: float = 0.1
    image_size: int = 16
    max_train_per_class: int | None = None
    test_fraction: float = 0.2
    normalization: str = "backbone"
    num_workers: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    split_file: str | None = None
    split_file_test: str | None = None
    split_prefix: str | None = None
    split_seed: int | None = None

    def __post_init__(self) -> None:
        from .data import available_datasets
        from .data.split_file import SPLIT_FILE_DATASETS

        if self.name not in available_datasets():
            raise ValueError(f"data.name: unknown data set {self.name!r}; known: {available_datasets()}")
        if self.num_tasks < 1:
            raise ValueError(f"data.num_tasks must be >= 1, got {self.num_tasks}")
        if isinstance(self.class_order, str) and self.class_order not in ("seeded", "fixed"):
            raise ValueError(f"data.class_order must be 'seeded', 'fixed' or a list of classes, got {self.class_order!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.image_size < 1:
            raise ValueError(f"data.image_size must be >= 1, got {self.image_size}")
        if self.max_train_per_class is not None and self.max_train_per_class < 1:
            raise ValueError(f"data.max_train_per_class must be >= 1, got {self.max_train_per_class}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.normalization not in ("backbone", "none", "imagenet"):
            raise ValueError(f"data.normalization must be 'backbone', 'none' or 'imagenet', got {self.normalization!r}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.split_file is None and (self.split_file_test is not None or self.split_prefix is not None):
            raise ValueError("data.split_file_test and data.split_prefix need data.split_file (the training list)")
        if self.split_file is not None and self.name not in SPLIT_FILE_DATASETS:
            raise ValueError(
                f"data.split_file lists image files; data set {self.name!r} is not read from image files "
                f"(use one of {sorted(SPLIT_FILE_DATASETS)})"
            )


@dataclass(frozen=True)
class ResourcesConfig:
    """What each stage asks the Ray scheduler for.

    Args:
        cpus_per_stage: CPUs of a computing stage (also its torch thread count).
        gpus_per_stage: GPUs of a computing stage (fractions share a GPU).
        executor: ``"ray"`` (default) or ``"local"`` (in-process, for debugging).
        num_cpus: CPUs of the local Ray cluster started when no ``RAY_ADDRESS`` is set.
        max_retries: Ray retries of a stage whose worker died.
        wait_for_resources_s: how long to wait for a node that can run a stage
            (autoscaling clusters); 0 refuses a request no node meets at once.
    """

    cpus_per_stage: float = 1.0
    gpus_per_stage: float = 0.0
    executor: str = "ray"
    num_cpus: int | None = None
    max_retries: int = 1
    wait_for_resources_s: float = 0.0

    def __post_init__(self) -> None:
        if self.wait_for_resources_s < 0:
            raise ValueError(f"resources.wait_for_resources_s must be >= 0, got {self.wait_for_resources_s}")
        if self.cpus_per_stage <= 0:
            raise ValueError(f"resources.cpus_per_stage must be > 0, got {self.cpus_per_stage}")
        if self.gpus_per_stage < 0:
            raise ValueError(f"resources.gpus_per_stage must be >= 0, got {self.gpus_per_stage}")
        if self.executor not in ("ray", "local"):
            raise ValueError(f"resources.executor must be 'ray' or 'local', got {self.executor!r}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"resources.num_cpus must be >= 1, got {self.num_cpus}")
        if self.max_retries < 0:
            raise ValueError(f"resources.max_retries must be >= 0, got {self.max_retries}")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow settings. ``uri`` falls back to ``MLFLOW_TRACKING_URI``, then to a
    sqlite file ``mlflow.db`` in the working directory. ``offline: true`` runs
    while the tracking server is unreachable and logs everything once it answers
    (a later re-run of the same command); otherwise an unreachable server at the
    start is an error."""

    experiment: str = "inflora"
    uri: str | None = None
    log_adapters: bool = True
    enabled: bool = True
    offline: bool = False


@dataclass(frozen=True)
class MethodSection:
    """The ``method`` section: which method runs, and the settings of each method.

    ``method.name`` selects the method; its settings are ``method.<name>`` (a
    mapping validated by that method's config class, e.g. ``InfLoRAConfig``).
    Settings of other methods may sit beside it (``method.sd_lora``), so that one
    config describes a whole comparison and ``--set method.name=…`` or
    ``--methods`` switch between them. As a shorthand, the selected method's
    settings may also be written flat (``method: {name: inflora, lamb: 0.95}``);
    flat keys override those of ``method.<name>``.

    Args:
        name: a registered method.
        settings: validated settings per method name; the selected one is always present.
    """

    name: str = "inflora"
    settings: dict[str, MethodConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in available_methods():
            raise ValueError(f"method.name: unknown method {self.name!r}; known methods: {available_methods()}")
        if self.name not in self.settings:
            self.settings[self.name] = method_config_class(self.name)()

    @property
    def config(self) -> MethodConfig:
        """The selected method's settings."""
        return self.settings[self.name]

    def select(self, name: str) -> "MethodSection":
        """The same settings with method ``name`` selected (its defaults if it has none)."""
        return MethodSection(name, dict(self.settings))


@dataclass(frozen=True)
class RunConfig:
    """A task-sequence run, minus its seed (a run is config + seed)."""

    name: str = "run"
    seeds: list[int] = field(default_factory=lambda: [0])
    output_dir: str = "runs"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoRASpec = field(default_factory=LoRASpec)
    method: MethodSection = field(default_factory=MethodSection)
    train: TrainSpec = field(default_factory=TrainSpec)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty name without '/', got {self.name!r}")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")

    def with_method(self, name: str) -> "RunConfig":
        """This config with method ``name`` selected."""
        return dataclasses.replace(self, method=self.method.select(name))

    def result_key(self) -> str:
        """Hash of everything that changes results (not seeds, paths, resources, tracking,
        nor the settings of methods that are not selected)."""
        payload = config_to_dict(self)
        for key in ("seeds", "output_dir", "resources", "tracking", "name"):
            payload.pop(key)
        payload["data"].pop("num_workers")
        payload["method"] = {"name": self.method.name, self.method.name: payload["method"][self.method.name]}
        if self.backbone.checkpoint or self.backbone.pretrained:  # loaded weights: the seed changes nothing
            payload["backbone"].pop("init_seed")
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:8]


# --------------------------------------------------------------------------- loading
_PATH_KEYS = {
    ("backbone", "checkpoint"),
    ("data", "root"),
    ("data", "split_file"),
    ("data", "split_file_test"),
    ("output_dir",),
}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional_inner(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 else None


def _check_scalar(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for option in typing.get_args(tp):
            if option is type(None):
                continue
            try:
                return _check_scalar(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} does not fit {tp}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 5e-4 as a string (no dot): accept numeric strings.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_check_scalar(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    return value


def _build_method(data: Any, prefix: str) -> MethodSection:
    """The ``method`` section: ``name``, the selected method's settings (nested or flat), others nested."""
    if data is None:
        data = {}
    where = prefix.rstrip(".")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    name = data.get("name", MethodSection.name)
    if not isinstance(name, str) or name not in available_methods():
        raise ConfigError(f"{where}.name: unknown method {name!r}; known methods: {available_methods()}")
    known = set(available_methods())
    flat = {k: v for k, v in data.items() if k != "name" and k not in known}
    nested = data.get(name)
    if flat and nested is not None and not isinstance(nested, Mapping):
        raise ConfigError(f"{where}.{name} must be a mapping, got {nested!r}")
    allowed = sorted(f.name for f in dataclasses.fields(method_config_class(name)))
    unknown = sorted(set(flat) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(f'{where}.{k}' for k in unknown)} for method {name!r}; its settings: {allowed} "
            f"(settings of another method go under {where}.<method>; known methods: {available_methods()})"
        )
    settings: dict[str, MethodConfig] = {}
    for method, section in data.items():
        if method in known and not (method == name and flat):
            settings[method] = _build(method_config_class(method), section, f"{where}.{method}.", section_name=f"{where}.{method}")
    if flat:  # flat keys set (or override) the selected method's settings
        settings[name] = _build(method_config_class(name), {**(nested or {}), **flat}, f"{where}.", section_name=where)
    return MethodSection(name, settings)


def _build(cls: type, data: Any, prefix: str, section_name: str | None = None) -> Any:
    if cls is MethodSection:
        return _build_method(data, prefix)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"section {prefix.rstrip('.')}" if prefix else "the top level"
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)} in {where}; allowed: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        tp = hints[name]
        inner = _optional_inner(tp) if typing.get_origin(tp) in (Union, types.UnionType) else None
        if _is_dataclass_type(tp):
            kwargs[name] = _build(tp, value, key + ".")
        elif inner is not None and _is_dataclass_type(inner):
            kwargs[name] = None if value is None else _build(inner, value, key + ".")
        else:
            kwargs[name] = _check_scalar(value, tp, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        if isinstance(cls, type) and issubclass(cls, MethodConfig) and section_name and section_name != cls.section:
            msg = msg.replace(f"{cls.section}.", f"{section_name}.")  # method.lamb → method.inflora.lamb
        if prefix and not msg.startswith(prefix.rstrip(".")) and prefix.rstrip(".") not in msg.split(" ")[0]:
            msg = f"{prefix.rstrip('.')}: {msg}"
        raise ConfigError(msg) from exc


build_section = _build
"""Validate a mapping into a config dataclass (``build_section(cls, data, "prefix.")``)."""


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    for keys in _PATH_KEYS:
        node: Any = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            path = Path(os.path.expandvars(os.path.expanduser(node[keys[-1]])))
            node[keys[-1]] = str(path if path.is_absolute() else (base / path).resolve())
    return data


def config_from_dict(data: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None) -> RunConfig:
    """Validate a plain mapping into a :class:`RunConfig`; relative paths resolve against ``base_dir`` (cwd)."""
    plain = json.loads(json.dumps(data, default=str)) if data else {}
    if "seed" in plain:
        if "seeds" in plain:
            raise ConfigError("give either seed or seeds, not both")
        plain["seeds"] = [plain.pop("seed")]
    plain = _resolve_paths(plain, Path(base_dir) if base_dir else Path.cwd())
    return _build(RunConfig, plain, "")


def read_yaml_mapping(path: str | os.PathLike[str], what: str = "config file") -> dict[str, Any]:
    """The mapping in a YAML file, or a :class:`ConfigError` saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from exc
    if data is None:  # an empty file would silently run every default
        raise ConfigError(f"{what} {path} is empty; write at least the keys that differ from the defaults (see configs/demo.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level")
    return data


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``key.sub=value`` overrides, validate."""
    data = apply_overrides(read_yaml_mapping(path), overrides or [])
    return config_from_dict(data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a nested mapping."""
    data = json.loads(json.dumps(data, default=str))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, MethodSection):
        return {"name": value.name, **{k: _plain(v) for k, v in sorted(value.settings.items())}}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (JSON/YAML-serialisable); ``method`` as ``{name, <method>: {...}}``."""
    return json.loads(json.dumps(_plain(cfg), default=str))


def updated(cfg: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """``cfg`` with typed values set at dotted keys (``{"lora.rank": 8}``), validated again.

    The values are Python values (a sweep's sampled point), never strings to parse.
    """
    data = config_to_dict(cfg)
    for key, value in values.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return config_from_dict(data)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
