"""InfLoRA model code: ViT + LoRA branches, subspace design and memory, heads, methods.

Nothing here knows about Ray, MLflow or the pipeline's run directories.

The public names below load on first use (:mod:`model.lazy`), so that reading
settings or results (:mod:`model.settings`, :mod:`model.train_spec`,
:mod:`model.methods.config`, :mod:`model.methods.results`) imports neither
torch nor timm; ``from model import create_backbone`` works as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

if TYPE_CHECKING:
    from .backbone import BackboneError, create_backbone, load_state_dict_file, save_backbone
    from .heads import TaskHeads
    from .lora import InfLoRAQKV, LoRABranch, LoRAQKV
    from .lora_constants import REFERENCE_DOWN_SCALE
    from .methods import ContinualMethod, LoRAConfig, MethodConfig, StepResult, available_methods, create_method, head_name
    from .net import ContinualViT
    from .subspace import SubspaceError, SubspaceMemory, design_down_projection, threshold_schedule
    from .train_spec import TrainSpec
    from .training import collect_covariances, predict, probe_sq_norm, train_session

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".backbone": ("BackboneError", "create_backbone", "load_state_dict_file", "save_backbone"),
    ".heads": ("TaskHeads",),
    ".lora": ("InfLoRAQKV", "LoRABranch", "LoRAQKV"),
    ".lora_constants": ("REFERENCE_DOWN_SCALE",),
    ".methods": ("ContinualMethod", "LoRAConfig", "MethodConfig", "StepResult", "available_methods", "create_method", "head_name"),
    ".net": ("ContinualViT",),
    ".subspace": ("SubspaceError", "SubspaceMemory", "design_down_projection", "threshold_schedule"),
    ".train_spec": ("TrainSpec",),
    ".training": ("collect_covariances", "predict", "probe_sq_norm", "train_session"),
})  # fmt: skip
