"""Run configuration: YAML validated into frozen pydantic models at the edge.

Unknown keys and bad values are rejected with a :class:`ConfigError`, one line
naming the key (``train.lr``, ``method.inflora.lamb``: pydantic's error location)
and what is allowed. Relative paths are resolved against the directory the
command runs in, once, here: Ray workers do not share the driver's working
directory. Settings declared in ``model/`` (:class:`~model.training.TrainSpec`,
each method's config) do not know their place in the file; this module nests them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError, create_model, field_validator, model_serializer, model_validator

from model.methods import LoRAConfig, MethodConfig, available_methods, method_config_class
from model.settings import Settings, result_payload, setting
from model.train_spec import TrainSpec

from .data.config import DataConfig

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
    "validate_section",
    "read_yaml_mapping",
    "check_timm_name",
]


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key."""


def similar_names(name: str, known: list[str], n: int = 6) -> list[str]:
    """The known names closest to a mistyped one (``difflib``), nearest first."""
    import difflib

    return difflib.get_close_matches(name, known, n=n, cutoff=0.75)


def check_timm_name(backbone: "BackboneConfig") -> None:
    """A :class:`ConfigError` naming ``backbone.name`` when timm has no such model (imports timm)."""
    import timm

    base = backbone.name.split(".")[0]
    if not timm.is_model(base):
        hint = similar_names(base, timm.list_models())
        raise ConfigError(f"backbone.name: unknown timm model {backbone.name!r}" + (f"; similar names: {hint}" if hint else ""))


# --------------------------------------------------------------------------- sections
class PretrainConfig(Settings):
    """How to pretrain the CPU-scale backbone when its checkpoint is missing.

    The data set must be disjoint from the continual tasks' data (see README).
    """

    dataset: str = setting("mnist", "data set the backbone is pretrained on")
    epochs: int = setting(12, "pretraining epochs", ge=1)
    lr: float = setting(1e-3, "pretraining learning rate", gt=0.0)
    batch_size: int = setting(128, "pretraining batch size", ge=1)
    weight_decay: float = setting(0.05, "pretraining weight decay")
    seed: int = setting(0, "seed of the pretraining")


class BackboneConfig(Settings):
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

    name: str = setting("vit_base_patch16_224.augreg_in21k", "timm model name")
    pretrained: bool = setting(True, "download timm's weights for name")
    checkpoint: str | None = setting(None, "local weights file; wins over pretrained")
    overrides: dict[str, Any] = setting({}, "timm constructor arguments")
    pretrain: PretrainConfig | None = setting(None, "recipe to create checkpoint when it is missing")
    reset_final_norm: bool = setting(False, "replace the final LayerNorm by a fresh, frozen one")
    init_seed: int = setting(0, "seed of the random weights", ge=0)

    @field_validator("name")
    @classmethod
    def _timm_name(cls, name: str) -> str:
        """Not empty; whether timm knows it is checked by the preflight, which imports timm
        (:func:`check_timm_name`): validating a config imports no torch and no timm."""
        if not name:
            raise ValueError("must be a timm model name")
        return name

    @model_validator(mode="after")
    def _pretrain_target(self) -> "BackboneConfig":
        if self.pretrain is not None and self.checkpoint is None:
            raise ValueError("backbone.pretrain needs backbone.checkpoint: the path the pretrained weights go to")
        return self

    def result_view(self) -> dict[str, Any]:
        view = super().result_view()
        if self.checkpoint or self.pretrained:  # loaded weights: the seed changes nothing
            view.pop("init_seed")
        return view


class ResourcesConfig(Settings):
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

    cpus_per_stage: float = setting(1.0, "CPUs of a computing stage", gt=0.0)
    gpus_per_stage: float = setting(0.0, "GPUs of a computing stage", ge=0.0)
    executor: Literal["ray", "local"] = setting("ray", "ray, or local (in-process)")
    num_cpus: int | None = setting(None, "CPUs of the local Ray cluster", ge=1)
    max_retries: int = setting(1, "Ray retries of a stage whose worker died", ge=0)
    wait_for_resources_s: float = setting(0.0, "how long to wait for a node that can run a stage", ge=0.0)


class TrackingConfig(Settings):
    """MLflow settings. ``uri`` falls back to ``MLFLOW_TRACKING_URI``, then to a
    sqlite file ``mlflow.db`` in the working directory. ``offline: true`` runs
    while the tracking server is unreachable and logs everything once it answers
    (a later re-run of the same command); otherwise an unreachable server at the
    start is an error."""

    experiment: str = setting("inflora", "MLflow experiment")
    uri: str | None = setting(None, "MLflow tracking URI")
    log_adapters: bool = setting(True, "upload the adapters as artifacts")
    enabled: bool = setting(True, "log to MLflow at all")
    offline: bool = setting(False, "run while the tracking server is unreachable")


# --------------------------------------------------------------------------- the method section
class _MethodSectionBase(Settings):
    """The ``method`` section: which method runs, and the settings of each method.

    ``method.name`` selects the method; its settings are ``method.<name>`` (that
    method's config model). Settings of other methods may sit beside it
    (``method.sd_lora``), so that one config describes a whole comparison and
    ``--set method.name=…`` or ``--methods`` switch between them. As a shorthand,
    the selected method's settings may also be written flat
    (``method: {name: inflora, lamb: 0.95}``); flat keys override those of
    ``method.<name>``. The fields are built from the method registry.
    """

    name: str = setting("inflora", "a registered method")

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_keys(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        methods = set(available_methods())
        name = data.get("name", "inflora")
        flat = {k: v for k, v in data.items() if k != "name" and k not in methods}
        if not flat or name not in methods:
            return data
        nested = data.get(name)
        if isinstance(nested, BaseModel):
            nested = _fields(nested)
        if nested is not None and not isinstance(nested, Mapping):
            return data  # reported as method.<name> not being a mapping
        out = {k: v for k, v in data.items() if k in methods or k == "name"}
        out[name] = {**(nested or {}), **flat}
        return out

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in available_methods():
            raise ValueError(f"unknown method {name!r}; known methods: {available_methods()}")
        return name

    @model_validator(mode="after")
    def _selected_present(self) -> "_MethodSectionBase":
        if getattr(self, self.name) is None:  # the selected method runs with its defaults
            object.__setattr__(self, self.name, method_config_class(self.name)())
        return self

    @model_serializer(mode="wrap")
    def _only_given(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if k == "name" or v is not None}

    @property
    def config(self) -> MethodConfig:
        """The selected method's settings."""
        return getattr(self, self.name)

    @property
    def settings(self) -> dict[str, MethodConfig]:
        """The settings given per method name (the selected one always)."""
        return {m: getattr(self, m) for m in available_methods() if getattr(self, m) is not None}

    def select(self, name: str) -> "MethodSection":
        """The same settings with method ``name`` selected (its defaults if it has none)."""
        return type(self).model_validate({**_fields(self), "name": name})

    def result_view(self) -> dict[str, Any]:
        """Only the selected method's settings change results."""
        return {"name": self.name, self.name: result_payload(self.config)}


def _method_section() -> type[_MethodSectionBase]:
    """The ``method`` section model: a field per registered method, selected by ``name``."""
    fields: dict[str, Any] = {
        m: (method_config_class(m) | None, setting(None, f"settings of method {m!r}")) for m in available_methods()
    }
    return create_model("MethodSection", __base__=_MethodSectionBase, **fields)


MethodSection = _method_section()


class RunConfig(Settings):
    """A task-sequence run, minus its seed (a run is config + seed)."""

    name: str = setting("run", "name of the run (its directory)", affects_result=False)
    seeds: list[int] = setting([0], "seeds to run", affects_result=False)
    output_dir: str = setting("runs", "where run directories go", affects_result=False)
    backbone: BackboneConfig = setting(BackboneConfig(), "which ViT and which weights")
    data: DataConfig = setting(DataConfig(), "the task sequence")
    method: MethodSection = setting(MethodSection(), "which method, and the settings of each")
    train: TrainSpec = setting(TrainSpec(), "how a session trains")
    resources: ResourcesConfig = setting(ResourcesConfig(), "what each stage asks the scheduler for", affects_result=False)
    tracking: TrackingConfig = setting(TrackingConfig(), "MLflow settings", affects_result=False)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "lora" in data:
            method = data.get("method") if isinstance(data.get("method"), Mapping) else {}
            name = method.get("name", "inflora") if isinstance(method, Mapping) else "inflora"
            keys = sorted(data["lora"]) if isinstance(data["lora"], Mapping) else ["rank"]
            if name in available_methods() and not issubclass(method_config_class(name), LoRAConfig):
                raise ValueError(f"the lora section is gone: method {name!r} has no LoRA settings; drop lora ({', '.join(keys)})")
            raise ValueError(
                f"the lora section is gone: LoRA settings belong to the method; write "
                f"{', '.join(f'method.{name}.{k}' for k in keys)} instead of {', '.join(f'lora.{k}' for k in keys)}"
            )
        return data

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not name or "/" in name:
            raise ValueError(f"must be a non-empty name without '/', got {name!r}")
        return name

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("must list at least one seed")
        return seeds

    def with_method(self, name: str) -> "RunConfig":
        """This config with method ``name`` selected."""
        return updated(self, {"method.name": name})

    @property
    def result_json(self) -> str:
        """Canonical JSON of everything that changes results (the fields marked ``affects_result``)."""
        return json.dumps(result_payload(self), sort_keys=True)

    def result_key(self) -> str:
        """Hash of everything that changes results (not seeds, paths, resources, tracking,
        nor the settings of methods that are not selected)."""
        return hashlib.sha256(self.result_json.encode()).hexdigest()[:8]


# --------------------------------------------------------------------------- errors
_PHRASES = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}
_BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"), "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the section at ``loc`` (for the list of allowed keys)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        inner = [a for a in getattr(field.annotation, "__args__", (field.annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return []
        model = inner[0]
    return sorted(model.model_fields)


def error_line(exc: ValidationError, root: type[BaseModel], prefix: str = "") -> str:
    """One line for a :class:`ValidationError`: the key from the error's location, and what is allowed."""
    errors = exc.errors(include_url=False)
    base = tuple(prefix.split(".")) if prefix else ()
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    if extra:
        parent = extra[0]["loc"][:-1]
        keys = [".".join(map(str, base + e["loc"])) for e in extra if e["loc"][:-1] == parent]
        where = f"section {'.'.join(map(str, base + parent))}" if base + parent else "the top level"
        return f"unknown config key(s) {', '.join(keys)} in {where}; allowed: {_fields_at(root, parent)}"
    e = errors[0]
    key = ".".join(str(p) for p in base + e["loc"])
    got = f", got {e['input']!r}"
    if e["type"] in ("value_error", "assertion_error"):
        msg = str(e["ctx"]["error"])
    elif e["type"] in _BOUNDS:
        op, name = _BOUNDS[e["type"]]
        limit = e["ctx"][name]
        msg = f"must be {op} {limit:g}{got}" if isinstance(limit, float) else f"must be {op} {limit}{got}"
    elif e["type"] == "literal_error":
        msg = f"must be one of {e['ctx']['expected']}{got}"
    elif e["type"] in _PHRASES:
        msg = _PHRASES[e["type"]] + got
    else:
        msg = e["msg"]
    if not key or msg.startswith(key):
        return msg
    return f"{key} {msg}" if msg.startswith("must") else f"{key}: {msg}"


def validate_section(cls: type[BaseModel], data: Any, prefix: str = "") -> Any:
    """Validate ``data`` into ``cls``; a :class:`ConfigError` naming the key (under ``prefix``) otherwise."""
    if data is None:
        data = {}
    if not isinstance(data, (Mapping, BaseModel)):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(error_line(exc, cls, prefix)) from None


# --------------------------------------------------------------------------- loading
_PATH_KEYS = {
    ("backbone", "checkpoint"),
    ("data", "root"),
    ("data", "cache_dir"),
    ("data", "split_file"),
    ("data", "split_file_test"),
    ("output_dir",),
}


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
    return validate_section(RunConfig, plain)


def read_yaml_mapping(path: str | os.PathLike[str], what: str = "config file") -> dict[str, Any]:
    """The mapping in a YAML file, or a :class:`ConfigError` saying what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; expected a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a text file (binary data, e.g. an image); expected a YAML file") from None
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


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """Plain nested dict of a config (JSON/YAML-serialisable); ``method`` as ``{name, <method>: {...}}``."""
    return cfg.model_dump(mode="json")


def _fields(model: BaseModel) -> dict[str, Any]:
    """Field name → value, as held (no dump)."""
    return {name: getattr(model, name) for name in type(model).model_fields}


def _set(model: BaseModel | None, tree: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``model`` (as they are: no dump) with the values of ``tree`` put in at their keys."""
    fields: dict[str, Any] = _fields(model) if model is not None else {}
    for key, value in tree.items():
        current = fields.get(key)
        if isinstance(value, dict) and (current is None or isinstance(current, BaseModel)):
            fields[key] = _set(current, value)
        else:
            fields[key] = value
    return fields


def updated(cfg: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """``cfg`` with typed values set at dotted keys (``{"method.inflora.rank": 8}``), validated once.

    The values are Python values (a sweep's sampled point), never strings to parse;
    untouched sections go in as they are.
    """
    tree: dict[str, Any] = {}
    for key, value in values.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return validate_section(RunConfig, _set(cfg, tree))


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
