"""InfLoRA model code: ViT + LoRA branches, subspace design and memory, heads, methods.

Nothing here knows about Ray, MLflow or the pipeline's run directories.
"""

from .backbone import BackboneError, create_backbone, load_state_dict_file, save_backbone
from .heads import TaskHeads
from .lora import REFERENCE_DOWN_SCALE, InfLoRAQKV, LoRABranch, LoRAQKV
from .methods import ContinualMethod, LoRAConfig, MethodConfig, StepResult, available_methods, create_method, head_name
from .net import ContinualViT
from .subspace import SubspaceError, SubspaceMemory, design_down_projection, threshold_schedule
from .training import TrainSpec, collect_covariances, predict, probe_sq_norm, train_session

__all__ = [
    "BackboneError",
    "ContinualMethod",
    "ContinualViT",
    "InfLoRAQKV",
    "LoRABranch",
    "LoRAQKV",
    "LoRAConfig",
    "MethodConfig",
    "StepResult",
    "REFERENCE_DOWN_SCALE",
    "SubspaceError",
    "SubspaceMemory",
    "TaskHeads",
    "TrainSpec",
    "available_methods",
    "collect_covariances",
    "create_backbone",
    "create_method",
    "design_down_projection",
    "head_name",
    "load_state_dict_file",
    "predict",
    "probe_sq_norm",
    "save_backbone",
    "threshold_schedule",
    "train_session",
]
