"""SD-LoRA: scalable decoupled LoRA (Wu et al., ICLR 2025).

Follows the official code ``WuYichen-97/SD-Lora-CL``:

* ``backbone/lora.py``, ``_LoRA_qkv_timm_train.forward``: each task adds, per
  wrapped block, LoRA factors ``A_q, B_q, A_v, B_v`` on the **query and value**
  rows of timm's fused ``qkv``; ``A`` is initialised as an ``nn.Linear``
  (``kaiming_uniform_(a=√5)``, ``LoRA_ViT_timm.reset_parameters``), ``B`` as zero.
* the current task's branch enters as ``α_t · B_t A_t x`` (``scaling_factor``,
  initial 0.8); every older branch i as a frozen *direction* times a trainable
  magnitude, ``α_i · B_i A_i x / (‖B_i‖_F ‖A_i‖_F)`` — the code divides by the
  product of the two factors' Frobenius norms, where the paper writes the norm
  of the product ``‖B_i A_i‖``; this module follows the code.
* magnitudes are scalars shared by every layer and by q and v
  (``wrapped_param`` / ``wrapped_param_prev``). ``LoRA_ViT_timm`` is rebuilt for
  every task (``models/sdlora.py``, ``update_network``), so the old magnitudes
  restart at 0.8 in each task and all of them train with the new branch
  (``magnitude_carry: false``, the default; ``true`` keeps the trained values).
* optimiser (``models/sdlora.py``, ``Learner._train``): SGD with momentum 0.9,
  no weight decay, ``MultiStepLR`` at epoch 10000, i.e. a constant rate
  (1e-2 on ImageNet-R, 8e-3 on CIFAR-100). The JSON files also name Adam, a
  cosine schedule and weight decay, but ``_train`` does not read those keys.
* the loss is the cross-entropy over the new task's logits only
  (``_update_representation``), as the per-task heads here.
* heads: ``backbone/linears.py`` ``SimpleLinear.reset_parameters``:
  ``kaiming_uniform_(weight, nonlinearity='linear')``, i.e. U(±√(3/d)), bias 0
  (:meth:`SDLoRA.init_head`; PyTorch's default ``nn.Linear`` init elsewhere).

The orthogonality term (``compute_ortho_loss``) is computed but not added to the
loss in the official code; it is left out here. The RR (rank reduction) and KD
variants are not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from ..lora import FactorBranch, LoRAQKV
from ..net import ContinualViT
from .base import ContinualMethod, head_name
from .config import BlocksSpec
from .config.sd_lora import SDLoRAConfig
from .registry import register_method

if TYPE_CHECKING:
    from .context import StepContext

__all__ = ["SDLoRA", "SDLoRAConfig", "MagnitudeBranch", "SDLoRAViT"]


class MagnitudeBranch(FactorBranch):
    """One task's SD-LoRA factors in one layer: ``down_<t>`` (``A``, r × d) and ``up_<t>`` (``B``, d × r).

    The magnitude is a scalar shared by every layer, owned by :class:`SDLoRAViT`
    and held here by reference. ``normalised`` selects the direction form of an
    old branch, ``α · B A / (‖B‖‖A‖)``, over the plain ``α · B A`` of the current one.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, targets: tuple[str, ...], magnitude: nn.Parameter) -> None:
        super().__init__(in_features, out_features, rank, targets)
        self._magnitude = [magnitude]
        self.normalised = False

    @property
    def magnitude(self) -> nn.Parameter:
        return self._magnitude[0]

    @property
    def is_trainable(self) -> bool:
        return self.magnitude.requires_grad or super().is_trainable

    def factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        out = {}
        for t in self.targets:
            down, up = self.down(t), self.up(t)
            scale = self.magnitude
            if self.normalised:
                scale = scale / (torch.linalg.matrix_norm(up) * torch.linalg.matrix_norm(down))
            out[t] = (up * scale, down)
        return out

    def cache_sources(self) -> list[Tensor]:
        return [self.magnitude] + super().cache_sources()


class SDLoRAViT(ContinualViT):
    """:class:`ContinualViT` with SD-LoRA's magnitudes (one scalar per task, ``magnitude.task_003``)."""

    def __init__(self, backbone: nn.Module, lora_blocks, rank: int, targets: tuple[str, ...]) -> None:
        super().__init__(backbone, lora_blocks)
        self.rank = rank
        self.targets = targets
        self.magnitudes = nn.ParameterDict()

    def magnitude(self, name: str, init: float = 1.0) -> nn.Parameter:
        if name not in self.magnitudes:
            self.magnitudes[name] = nn.Parameter(torch.tensor(float(init), device=self.heads._device_anchor.device), requires_grad=False)
        return self.magnitudes[name]

    def add_task_branch(self, name: str, init: float) -> None:
        for layer in self.lora_layers.values():
            layer.add_module_branch(name, MagnitudeBranch(layer.in_features, layer.attn_dim, self.rank, self.targets, self.magnitude(name, init)))

    def set_current(self, name: str | None) -> None:
        """Branch ``name`` takes the plain form; every other one the normalised direction form."""
        for layer in self.lora_layers.values():
            for branch_name, branch in layer.branches.items():
                branch.normalised = branch_name != name

    def make_branch(self, layer: LoRAQKV, tensors: Mapping[str, Tensor], train_down: bool = False) -> nn.Module:
        raise RuntimeError("SD-LoRA branches are created by add_task_branch")

    def extra_state(self) -> dict[str, Tensor]:
        return {f"magnitude.{k}": p.detach().cpu().reshape(()) for k, p in self.magnitudes.items()}

    def load_extra_state(self, kind: str, key: str, value: Tensor) -> None:
        if kind != "magnitude":
            super().load_extra_state(kind, key, value)
        with torch.no_grad():
            self.magnitude(key).copy_(value)

    def load_adapter_state(self, state: Mapping[str, Tensor], train_down: bool = False) -> None:
        for key in state:  # branches must exist before their tensors are loaded
            if key.startswith("lora."):
                branch = key.split(".")[-2]
                if branch not in next(iter(self.lora_layers.values())).branches:
                    self.add_task_branch(branch, 1.0)
        super().load_adapter_state(state, train_down)


@register_method
class SDLoRA(ContinualMethod):
    """A new q/v branch and magnitude per task; old branches are frozen directions with trainable magnitudes."""

    name = "sd_lora"
    config_class = SDLoRAConfig
    config: SDLoRAConfig
    official_backbone: ClassVar[str] = "vit_base_patch16_224.augreg2_in21k_ft_in1k"

    @staticmethod
    def branch_name(session: int) -> str:
        return f"task_{session:03d}"

    def lora_blocks(self) -> BlocksSpec:
        return self.config.blocks

    def build_net(self, backbone: nn.Module) -> SDLoRAViT:
        return SDLoRAViT(backbone, self.config.blocks, self.config.rank, self.config.targets)

    def restore(self, net: ContinualViT, ctx: "StepContext", sessions_done: int) -> None:
        super().restore(net, ctx, sessions_done)
        assert isinstance(net, SDLoRAViT)
        net.set_current(self.branch_name(sessions_done - 1) if sessions_done else None)

    def begin_session(self, net: ContinualViT, ctx: "StepContext") -> list[nn.Parameter]:
        assert isinstance(net, SDLoRAViT)
        net.freeze_all()
        init = self.config.magnitude_init
        if not self.config.magnitude_carry:
            with torch.no_grad():
                for p in net.magnitudes.values():
                    p.fill_(init)
        name = self.branch_name(ctx.session)
        net.add_task_branch(name, init)
        net.set_current(name)
        generator = ctx.generator("lora_init")
        params: list[nn.Parameter] = []
        for layer in net.lora_layers.values():
            branch: MagnitudeBranch = layer.branches[name]  # type: ignore[assignment]
            for t in branch.targets:
                with torch.no_grad():
                    down = torch.empty(branch.down(t).shape)
                    nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
                    branch.down(t).copy_(down)
                branch.down(t).requires_grad_(True)
                branch.up(t).requires_grad_(True)
                params += [branch.down(t), branch.up(t)]
        for p in net.magnitudes.values():
            p.requires_grad_(True)
            params.append(p)
        return params + self.add_session_heads(net, ctx)

    def init_head(self, head: nn.Linear, generator: torch.Generator | None) -> None:
        """``SimpleLinear.reset_parameters``: weight U(±√(3/d)) (Kaiming, linear gain), bias 0."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(head.weight, nonlinearity="linear", generator=generator)
            nn.init.zeros_(head.bias)

    def trained_state(self, net: ContinualViT, ctx: "StepContext") -> dict[str, Tensor]:
        state = net.adapter_state([self.branch_name(ctx.session)], [head_name(t) for t in ctx.tasks])
        return {**state, **net.extra_state()}
