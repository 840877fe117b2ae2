"""CL-LoRA: continual low-rank adaptation for rehearsal-free class-incremental learning (He et al., CVPR 2025).

Follows the official code ``JiangpengHe/CL-LoRA`` (``models/cllora.py``,
``backbone/vit_cllora.py``, ``backbone/linears.py``, ``exps/*.json``):

* ``vit_cllora.py``, ``Adapter_lora``: an adapter adds ``lora_A(lora_B(x))`` to the
  **q and v** outputs (``msa: [1, 0, 1]``). ``lora_B`` (here ``down``, r × d) is the
  transposed Q of ``torch.linalg.qr`` of a ``torch.rand(d, r)`` draw (random
  orthonormal rows), ``lora_A`` (here ``up``, d × r) is zero.
* ``general_pos`` (blocks 0-5): **task-shared** adapters, created once; their
  ``down`` never trains (``vit_base_patch16_224_cllora``, ``get_new_adapter_msa``),
  their ``up`` trains in every task. ``specfic_pos`` (blocks 6-11): **task-specific**
  adapters, new for each task, both factors trained, each output multiplied by the
  task's **block weight** (``block_weight``, 3 × #specific, ``uniform_(0.5, 1.5)``,
  trained; ``Attention_lora.forward``: ``q += w[0] · adapter_q(x)``).
* ``cllora.py``, ``Learner._init_train``: the training logits are a cosine
  classifier (``CosineLinearFeature``: ``σ · cos(x, w)``, ``w`` uniform ±1/√d, ``σ``
  trained from 1) over the task's classes; from the second task, each batch first
  takes a separate SGD step on the **distillation** loss ``5 · KD_T=2`` between the
  cosine logits of the CLS feature after the shared blocks only
  (``forward_general_cls``: blocks 0-5, then the final norm) with the current and
  with the previous task's shared adapters (``old_adapter_list``); before that
  step the gradient of each shared ``up`` is **reassigned** row by row by
  ``d · ‖old up_i‖ / Σ_j ‖old up_j‖``. Then a second step on the cross-entropy plus
  ``1e-4 ·`` the mean ``|cos|`` between the flattened block weights and every old
  task's (``compute_orthogonality_loss``).
* ``replace_fc`` / ``forward_test`` / ``forward_diagonal`` (``use_reweight``, α = β = 0):
  after each task, the mean feature of each new class (training images, test
  transforms) with the shared adapters and the task's specific adapters and block
  weights; a class of task i is scored by the cosine between the image's feature
  computed with task i's specific adapters (and the current shared ones) and its
  mean (σ = 1).

Departures (README, "CL-LoRA"): the cross-entropy's forward runs after the
distillation step (officially before it, its backward after it); the unused
off-diagonal prototypes of ``replace_fc`` are not computed. The official protocol
(class order, tasks, train/test folders, transforms, optimiser) is
``imagenet_r_40_cl_lora_official.yaml``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..lora import TARGETS, FactorBranch
from ..net import ContinualViT, resolve_lora_blocks
from ..training import NonFiniteTrainingError, TrainingHooks, autocast_context
from .base import ContinualMethod, Step, head_name
from .config.cl_lora import CLLoRAConfig
from .prototypes import PrototypeSteps, PrototypeViT
from .registry import register_method

if TYPE_CHECKING:
    from .context import StepContext

__all__ = ["CLLoRA", "CLLoRAConfig", "CLLoRAViT", "CosineHead", "WeightedBranch", "kd_loss", "reassigned_grad", "block_weight_orthogonality"]

SHARED = "shared"
"""Key of the task-shared branch in the shared blocks' ``branches``."""
SPECIFIC = "specific"
"""Key under which the active task's specific branch sits in the specific blocks' ``branches``."""


class WeightedBranch(FactorBranch):
    """A task-specific adapter: each target's ``up · down`` times its entry of the task's block weights.

    The block weights (3 × #specific) belong to :class:`CLLoRAViT` and are held
    here by reference with this block's column; ``None`` scales by 1.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, targets: Sequence[str], weights: nn.Parameter | None, column: int) -> None:
        super().__init__(in_features, out_features, rank, targets)
        self._weights = [weights] if weights is not None else []
        self.column = column

    def factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        if not self._weights:
            return super().factors()
        w = self._weights[0]
        return {t: (self.up(t) * w[TARGETS.index(t), self.column], self.down(t)) for t in self.targets}

    @property
    def is_trainable(self) -> bool:
        return super().is_trainable or any(w.requires_grad for w in self._weights)

    def cache_sources(self) -> list[Tensor]:
        return super().cache_sources() + self._weights


class CosineHead(nn.Module):
    """``CosineLinearFeature``: ``σ · cos(x, w_c)`` per class; ``w`` uniform ±1/√d, ``σ`` from 1."""

    def __init__(self, in_features: int, out_features: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / in_features**0.5
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound, generator=generator))
        self.sigma = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.sigma * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


def random_orthonormal_rows(rank: int, dim: int, generator: torch.Generator) -> Tensor:
    """``Adapter_lora``'s ``lora_B``: ``Q.T`` of the reduced QR of a uniform ``(dim, rank)`` draw, ``(rank, dim)``."""
    q, _ = torch.linalg.qr(torch.rand(dim, rank, generator=generator))
    return q.T.contiguous()


class CLLoRAViT(PrototypeViT):
    """Shared adapters in ``shared_blocks``, one specific adapter set per task in ``specific_blocks``.

    Every task's specific branches are kept in ``specific[task][block]``; the one
    :meth:`use_task` selects sits in each specific layer's ``branches`` as
    ``"specific"``, so the wrapped layer adds exactly the shared or the selected
    adapter. ``teacher`` holds the previous task's shared adapters during training.
    """

    def __init__(self, backbone: nn.Module, config: CLLoRAConfig, rank: int) -> None:
        depth = len(backbone.blocks)  # type: ignore[attr-defined]
        shared = resolve_lora_blocks(depth, config.shared_blocks) if config.shared_blocks else []
        specific = resolve_lora_blocks(depth, config.specific_blocks)
        super().__init__(backbone, sorted(shared + specific))
        self.config, self.rank = config, rank
        self.shared_blocks, self.specific_blocks = shared, specific
        self.specific = nn.ModuleDict()
        self.block_weights = nn.ParameterDict()
        self.teacher: dict[str, FactorBranch] = {}
        self.active: str | None = None

    def layer(self, block: int):
        return self.backbone.blocks[block].attn.qkv  # type: ignore[index]

    # ------------------------------------------------------------- adapters
    def ensure_shared(self) -> None:
        for b in self.shared_blocks:
            layer = self.layer(b)
            if SHARED not in layer.branches:
                layer.add_module_branch(SHARED, FactorBranch(layer.in_features, layer.attn_dim, self.rank, self.config.targets))

    def ensure_task(self, task: str) -> None:
        """Create (zero) task ``task``'s specific branches and block weights if missing."""
        if task in self.specific:
            return
        weights = None
        if self.config.block_weights:
            anchor = self.heads._device_anchor
            self.block_weights[task] = nn.Parameter(torch.ones(len(TARGETS), len(self.specific_blocks), device=anchor.device), requires_grad=False)
            weights = self.block_weights[task]
        self.specific[task] = nn.ModuleDict({
            str(b): WeightedBranch(self.layer(b).in_features, self.layer(b).attn_dim, self.rank, self.config.targets, weights, i).to(self.heads._device_anchor.device)
            for i, b in enumerate(self.specific_blocks)
        })

    def use_task(self, task: str) -> None:
        """Put task ``task``'s specific adapters in the specific layers."""
        if self.active == task:
            return
        for b in self.specific_blocks:
            self.layer(b).branches[SPECIFIC] = self.specific[task][str(b)]
        self.active = task

    def task_features(self, x: Tensor, head: str) -> Tensor:
        self.use_task(head)
        return self.features(x)

    def shared_features(self, x: Tensor, teacher: bool = False) -> Tensor:
        """``forward_general_cls``: the CLS feature after the shared blocks only, then the final norm."""
        vit = self.backbone
        swapped = {}
        if teacher:
            for b in self.shared_blocks:
                swapped[b] = self.layer(b).branches[SHARED]
                self.layer(b).branches[SHARED] = self.teacher[str(b)]
        try:
            h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))  # type: ignore[operator]
            for b in self.shared_blocks:
                h = vit.blocks[b](h)  # type: ignore[index]
            return vit.norm(h)[:, 0]  # type: ignore[operator]
        finally:
            for b, branch in swapped.items():
                self.layer(b).branches[SHARED] = branch

    # ---------------------------------------------------------- persistence
    def cl_state(self, task: str, heads: Sequence[str]) -> dict[str, Tensor]:
        """The shared adapters as they stand, task ``task``'s specific adapters and block weights, the heads."""
        state: dict[str, Tensor] = {}
        for b in self.shared_blocks:
            for pname, p in self.layer(b).branches[SHARED].named_parameters():
                state[f"lora.blocks.{b}.attn.qkv.{SHARED}.{pname}"] = p.detach().cpu().contiguous()
        for b in self.specific_blocks:
            for pname, p in self.specific[task][str(b)].named_parameters():
                state[f"lora.blocks.{b}.attn.qkv.{task}.{pname}"] = p.detach().cpu().contiguous()
        if task in self.block_weights:
            state[f"block_weight.{task}"] = self.block_weights[task].detach().cpu().contiguous()
        for h in heads:
            for pname, p in self.heads.heads[h].named_parameters():
                state[f"head.{h}.{pname}"] = p.detach().cpu().contiguous()
        return state

    def load_adapter_state(self, state: Mapping[str, Tensor], train_down: bool = False) -> None:
        """Copy ``state`` into the adapters, block weights, heads and prototypes (created when missing), in place."""
        self.ensure_shared()
        heads: dict[str, dict[str, Tensor]] = {}
        for key, value in sorted(state.items()):
            kind, name = key.split(".", 1)
            if kind == "lora":
                layer_name, branch, pname = name.rsplit(".", 2)
                block = int(layer_name.split(".")[1])
                if branch == SHARED:
                    target = self.layer(block).branches[SHARED]
                else:
                    self.ensure_task(branch)
                    target = self.specific[branch][str(block)]
                with torch.no_grad():
                    getattr(target, pname).copy_(value)
            elif kind == "block_weight":
                self.ensure_task(name)
                with torch.no_grad():
                    self.block_weights[name].copy_(value)
            elif kind == "head":
                head, pname = name.rsplit(".", 1)
                heads.setdefault(head, {})[pname] = value
            else:
                self.load_extra_state(kind, name, value)
        for head, tensors in heads.items():
            if head not in self.heads.heads:
                self.heads.heads[head] = CosineHead(self.embed_dim, tensors["weight"].shape[0]).to(self.heads._device_anchor.device)
            with torch.no_grad():
                for pname, value in tensors.items():
                    getattr(self.heads.heads[head], pname).copy_(value)


def kd_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``_KD_loss``: ``−Σ softmax(teacher/T) · log_softmax(student/T) / batch`` (no T² factor)."""
    return -(F.softmax(teacher / temperature, dim=1) * F.log_softmax(student / temperature, dim=1)).sum() / student.shape[0]


def reassigned_grad(grad: Tensor, old_up: Tensor) -> Tensor:
    """The official gradient reassignment: row i of the ``up`` gradient (d × r) times ``d · ‖old_up_i‖ / Σ_j ‖old_up_j‖``."""
    norms = torch.linalg.vector_norm(old_up, dim=1)
    return grad * (len(norms) * norms / norms.sum())[:, None]


def block_weight_orthogonality(old: Sequence[Tensor], current: Tensor, eps: float = 1e-8) -> Tensor:
    """``compute_orthogonality_loss``: mean over old tasks of ``|⟨old/(‖old‖+ε), cur/(‖cur‖+ε)⟩|`` (flattened)."""
    cur = current.flatten() / (current.norm() + eps)
    return torch.stack([((o.flatten() / (o.norm() + eps)) * cur).sum().abs() for o in old]).mean()


class _CLLoRAHooks(TrainingHooks):
    """The distillation step before each batch (task > 0) and the block-weight orthogonality term."""

    def __init__(self, net: CLLoRAViT, task: str, head: str, old_weights: list[Tensor], config: CLLoRAConfig, precision: str) -> None:
        self.task, self.head, self.config, self.precision = task, head, config, precision
        self.old_weights = old_weights
        self.distil = bool(net.teacher) and bool(net.shared_blocks) and config.kd_weight > 0

    def before_batch(self, net: nn.Module, images: Tensor, targets: Tensor, optimizer: torch.optim.Optimizer) -> None:
        if not self.distil:
            return
        assert isinstance(net, CLLoRAViT)
        head = net.heads.heads[self.head]
        with autocast_context(images.device, self.precision):
            student = head(net.shared_features(images))
            with torch.no_grad():
                teacher_features = net.shared_features(images, teacher=True)
            teacher = head(teacher_features)  # the official soft targets are not detached: σ and w also learn from them
        loss = self.config.kd_weight * kd_loss(student.float(), teacher.float(), self.config.kd_temperature)
        if not torch.isfinite(loss.detach()):
            raise NonFiniteTrainingError(f"cl_lora distillation loss is {float(loss):g}; lower train.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for b in net.shared_blocks:
            branch = net.layer(b).branches[SHARED]
            old = net.teacher[str(b)]
            for t in branch.targets:
                if branch.up(t).grad is not None:
                    branch.up(t).grad = reassigned_grad(branch.up(t).grad, old.up(t).detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def extra_loss(self, net: nn.Module, logits: Tensor, targets: Tensor) -> Tensor | None:
        if not self.old_weights or self.config.orthogonality_weight == 0:
            return None
        assert isinstance(net, CLLoRAViT)
        return self.config.orthogonality_weight * block_weight_orthogonality(self.old_weights, net.block_weights[self.task])


@register_method
class CLLoRA(PrototypeSteps, ContinualMethod):
    """Task-shared adapters (distilled, reassigned gradients) and task-specific adapters with block weights."""

    name = "cl_lora"
    config_class = CLLoRAConfig
    config: CLLoRAConfig

    def lora_blocks(self) -> list[int]:
        return sorted(self.config.shared_blocks + self.config.specific_blocks)

    def build_net(self, backbone: nn.Module) -> CLLoRAViT:
        return CLLoRAViT(backbone, self.config, self.config.rank)

    def steps(self) -> list[Step]:
        return self.with_prototype_step([Step("train", writes=("adapter",), uploads=("adapter",))])

    def restore(self, net: ContinualViT, ctx: "StepContext", sessions_done: int) -> None:
        assert isinstance(net, CLLoRAViT)
        net.ensure_shared()
        super().restore(net, ctx, sessions_done)
        self.restore_prototypes(net, ctx, sessions_done)
        net.requires_grad_(False)

    def begin_session(self, net: ContinualViT, ctx: "StepContext") -> list[nn.Parameter]:
        assert isinstance(net, CLLoRAViT)
        net.freeze_all()
        net.classify_by_prototypes = False
        task = head_name(ctx.session)
        generator = ctx.generator("lora_init")
        device = net.heads._device_anchor.device
        params: list[nn.Parameter] = []
        net.teacher = {}
        for b in net.shared_blocks:
            branch = net.layer(b).branches[SHARED]
            if ctx.session == 0:  # the shared adapters are drawn once; their down never trains
                with torch.no_grad():
                    for t in branch.targets:
                        branch.down(t).copy_(random_orthonormal_rows(self.config.rank, branch.down(t).shape[1], generator))
            else:
                teacher = FactorBranch(branch.down(branch.targets[0]).shape[1], branch.up(branch.targets[0]).shape[0], self.config.rank, branch.targets)
                teacher.load_state_dict(branch.state_dict())
                net.teacher[str(b)] = teacher.to(device)
            for t in branch.targets:
                branch.up(t).requires_grad_(True)
                params.append(branch.up(t))
        net.ensure_task(task)
        for b in net.specific_blocks:
            branch = net.specific[task][str(b)]
            with torch.no_grad():
                for t in branch.targets:
                    branch.down(t).copy_(random_orthonormal_rows(self.config.rank, branch.down(t).shape[1], generator))
            branch.set_trainable(True)
            params.extend(branch.parameters())
        if task in net.block_weights:
            with torch.no_grad():
                net.block_weights[task].uniform_(0.5, 1.5, generator=generator)
            net.block_weights[task].requires_grad_(True)
            params.append(net.block_weights[task])
        net.active = None
        net.use_task(task)
        heads = ctx.generator("heads")
        for h, n in ctx.head_sizes().items():
            net.heads.heads[h] = CosineHead(net.embed_dim, n, heads).to(device)
            params.extend(net.heads.heads[h].parameters())
        return params

    def training_hooks(self, net: ContinualViT, ctx: "StepContext") -> TrainingHooks:
        assert isinstance(net, CLLoRAViT)
        task = head_name(ctx.session)
        old = [net.block_weights[head_name(s)].detach() for s in range(ctx.session) if head_name(s) in net.block_weights]
        return _CLLoRAHooks(net, task, head_name(ctx.tasks[0]), old, self.config, ctx.train.precision)

    def trained_state(self, net: ContinualViT, ctx: "StepContext") -> dict[str, Tensor]:
        assert isinstance(net, CLLoRAViT)
        return net.cl_state(head_name(ctx.session), [head_name(t) for t in ctx.tasks])

    def eval_metrics(self, net: ContinualViT, ctx: "StepContext") -> dict[str, float]:
        assert isinstance(net, CLLoRAViT)
        if not net.block_weights:
            return {}
        return {"block_weight/mean": statistics.fmean(float(w.mean()) for w in net.block_weights.values())}
