"""LoRA⁻: LoRA subtraction for a drift-resistant space (Liu & Chang, CVPR 2025).

Follows the official code ``scarlet0703/LoRA-Sub-DRS`` (read from its copy
``DngBack/LoRA-Sub-DRS`` at the first commit, 871d29c; the port
``RL-VIG/LibContinual`` ``core/model/lora_sub.py`` agrees):

* ``models/vit_lora.py``, ``Attention_LoRA``: every task adds, on the **k and v**
  rows of ``qkv``, its own ``lora_A_k``/``lora_A_v`` (here ``down_k``/``down_v``,
  r × d, ``kaiming_uniform_(a=√5)``) and ``lora_B_k``/``lora_B_v`` (``up_k``/``up_v``,
  d × r, ``nn.init.sparse_`` with sparsity 1 − 1/d: one N(0, 0.01²) entry per
  column). Both factors of the current task train; old ones are frozen. The
  forward adds the sum of every task's ``B A`` (``forward``, ``task > -0.5``).
* ``methods/lorasub_drs.py``, ``LoRAsub_DRS._train``: before task t > 0, one pass
  over the task's training data with ``get_cur_x=True``, in which the old tasks'
  products are **subtracted** from the weights, ``k = (W₀ − Σ_{i<t} B_i A_i) x``
  (the LoRA subtraction), collects at every ``qkv`` input the covariance ``x xᵀ``
  (``cur_matrix``). ``optimgrad/adam_proj.py``, ``Adam.get_eigens`` /
  ``get_transforms``: its SVD gives the basis ``U_k`` of the top eigenvectors up to
  99 % of the energy (``thres``); the drift-resistant space's projector is
  ``P = U_k U_kᵀ / ‖U_k U_kᵀ‖_F``. ``Adam.step`` multiplies the **Adam update** (not
  the gradient) of every LoRA factor by ``P``: ``up ← up + P Δ`` (d × r) and
  ``down ← down + Δ P`` (r × d). Heads are not projected. Task 0 is not projected.
* ``train_function``: the loss is the cross-entropy of the current task's head
  plus λ · the augmented triplet loss (``utils/losses.py``,
  ``AugmentedTripletLoss``) of the L2-normalised CLS features, whose negatives
  also include every old class's (normalised) prototype.
* ``_build_protos`` / ``eval_task`` / ``_eval_model``: after each task, the class
  means of the task's training images (test transforms) under the network as it
  then stands are stored as prototypes and never updated; prediction is the
  nearest normalised prototype (NME) of the normalised feature. The trained
  heads serve training only.

Departures (README, "LoRA⁻"): the projection is applied after ``torch.optim.Adam``'s
step (ε added to √v̂, not √v: a difference of order ε); every task runs
``train.epochs`` (officially the first ImageNet-R task runs ``init_epoch`` 40 under a
K = 50 cosine); eigenvectors in float64; the triplet loss vectorised; the sparse
init drawn from the step's generator.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..lora import FactorBranch, LoRAQKV, check_targets
from ..net import ContinualViT
from ..training import TrainingHooks, collect_covariances
from .base import Step, head_name
from .config.lora_minus import LoRAMinusConfig
from .lora_family import LoRAMethod
from .prototypes import PrototypeSteps, PrototypeViT
from .registry import register_method

if TYPE_CHECKING:
    from .context import StepContext

__all__ = [
    "LoRAMinus",
    "LoRAMinusConfig",
    "official_init",
    "LoRAMinusViT",
    "drift_resistant_basis",
    "projector",
    "augmented_triplet_loss",
]


@torch.no_grad()
def official_init(branch: FactorBranch, generator: torch.Generator) -> None:
    """``Attention_LoRA.init_param``: ``down`` Kaiming-uniform (a = √5), ``up`` sparse, one N(0, 0.01²) entry per column."""
    for t in branch.targets:
        down, up = torch.empty(branch.down(t).shape), torch.empty(branch.up(t).shape)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
        _sparse_(up, 1.0 - 1.0 / up.shape[0], generator)
        branch.down(t).copy_(down)
        branch.up(t).copy_(up)


def _sparse_(tensor: Tensor, sparsity: float, generator: torch.Generator, std: float = 0.01) -> None:
    """``nn.init.sparse_`` with every draw from ``generator`` (torch's own draws the zero rows from the global RNG)."""
    rows, cols = tensor.shape
    tensor.normal_(0, std, generator=generator)
    zeros = int(math.ceil(sparsity * rows))
    for col in range(cols):
        tensor[torch.randperm(rows, generator=generator)[:zeros], col] = 0


class LoRAMinusViT(PrototypeViT):
    """:class:`PrototypeViT` whose branches are :class:`FactorBranch` es (one down and one up per target)."""

    def __init__(self, backbone: nn.Module, lora_blocks, rank: int, targets: Sequence[str]) -> None:
        super().__init__(backbone, lora_blocks)
        self.rank = rank
        self.targets = check_targets(targets)

    def add_factor_branches(self, name: str, generator: torch.Generator) -> list[nn.Parameter]:
        """Add task ``name``'s branch (official init) to every wrapped layer, trainable; returns its parameters."""
        params: list[nn.Parameter] = []
        for layer in self.lora_layers.values():
            branch = FactorBranch(layer.in_features, layer.attn_dim, self.rank, self.targets)
            official_init(branch, generator)
            branch.set_trainable(True)
            layer.add_module_branch(name, branch)
            params.extend(branch.parameters())
        return params

    def make_branch(self, layer: LoRAQKV, tensors: Mapping[str, Tensor], train_down: bool = False) -> nn.Module:
        return FactorBranch(layer.in_features, layer.attn_dim, tensors[f"down_{self.targets[0]}"].shape[0], self.targets)


def drift_resistant_basis(cov: Tensor, threshold: float) -> Tensor:
    """Top eigenvectors of ``cov`` up to ``threshold`` of its energy, ``(d, k)`` (``Adam.get_transforms``).

    ``k`` is the first count whose cumulative eigenvalue share reaches ``threshold``.
    """
    values, vectors = torch.linalg.eigh(cov.double())
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    share = values.cumsum(0) / values.sum()
    k = int((share < threshold).sum()) + 1
    return vectors[:, : min(k, cov.shape[0])]


def projector(basis: Tensor) -> Tensor:
    """``P = U Uᵀ / ‖U Uᵀ‖_F`` (official ``transform / torch.norm(transform)``), ``(d, d)``."""
    p = basis @ basis.T
    return p / torch.linalg.matrix_norm(p)


def augmented_triplet_loss(features: Tensor, labels: Tensor, margin: float, prototypes: Tensor | None = None) -> Tensor:
    """``AugmentedTripletLoss``: batch-hard triplet loss whose negatives include the old prototypes.

    For each anchor ``i``: ``d_ap`` is its largest distance to a same-label sample
    (itself included), ``d_an`` its smallest to a sample of another label (when the
    batch has none, ``d_ap + margin``) and to any old prototype; the loss is
    ``mean(relu(d_ap − d_an + margin))`` (``MarginRankingLoss``). Distances are
    Euclidean, clamped at 1e-12 before the square root as in the official code.

    Args:
        features: ``(n, D)``, already normalised.
        labels: ``(n,)``.
        prototypes: ``(m, D)`` normalised old class means, or ``None``.
    """
    sq = features.pow(2).sum(dim=1, keepdim=True)
    dist = (sq + sq.T - 2 * features @ features.T).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    d_ap = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
    d_an = torch.where(torch.isinf(d_an), d_ap + margin, d_an)
    if prototypes is not None and len(prototypes):
        to_protos = torch.cdist(features, prototypes.to(features), compute_mode="donot_use_mm_for_euclid_dist").clamp(min=1e-12)
        d_an = torch.minimum(d_an, to_protos.amin(dim=1))
    return F.relu(d_ap - d_an + margin).mean()


class _DriftResistantHooks(TrainingHooks):
    """Projects each step of the LoRA factors into the drift-resistant space; adds the ATL."""

    def __init__(self, net: PrototypeViT, projections: dict[nn.Parameter, tuple[Tensor, bool]],
                 weight: float, margin: float) -> None:
        self.projections = projections
        self.weight = weight
        self.margin = margin
        self.prototypes = net.old_prototypes()
        self._before: dict[nn.Parameter, Tensor] = {}
        self._features: list[Tensor] = []
        if weight > 0:
            net.backbone.register_forward_hook(lambda _m, _i, out: self._features.__setitem__(slice(None), [out]))

    def extra_loss(self, net: nn.Module, logits: Tensor, targets: Tensor) -> Tensor | None:
        if self.weight == 0:
            return None
        features = F.normalize(self._features[0].float(), dim=-1)
        return self.weight * augmented_triplet_loss(features, targets, self.margin, self.prototypes)

    def before_optimizer_step(self, net: nn.Module, params: list[nn.Parameter]) -> None:
        self._before = {p: p.detach().clone() for p in self.projections}

    @torch.no_grad()
    def after_optimizer_step(self, net: nn.Module, params: list[nn.Parameter]) -> None:
        for p, (proj, left) in self.projections.items():
            before = self._before[p]
            step = p - before
            p.copy_(before + (proj @ step if left else step @ proj))




@register_method
class LoRAMinus(PrototypeSteps, LoRAMethod):
    """A trainable k/v branch per task, stepped inside the drift-resistant space of the LoRA-subtracted model."""

    name = "lora_minus"
    config_class = LoRAMinusConfig
    config: LoRAMinusConfig  # type: ignore[assignment]

    def branch_name(self, session: int) -> str:
        return head_name(session)

    def build_net(self, backbone: nn.Module) -> LoRAMinusViT:
        return LoRAMinusViT(backbone, self.lora_blocks(), self.config.rank, self.targets)

    def steps(self) -> list[Step]:
        return self.with_prototype_step(super().steps())

    def restore(self, net: ContinualViT, ctx: "StepContext", sessions_done: int) -> None:
        super().restore(net, ctx, sessions_done)
        self.restore_prototypes(net, ctx, sessions_done)

    # ---------------------------------------------------------------- design
    def design(self, net: ContinualViT, ctx: "StepContext") -> tuple[dict[str, Tensor], dict[str, float]]:
        """Bases of the drift-resistant space: covariances of the model with the old branches subtracted."""
        if ctx.session == 0:
            return {}, {}
        with torch.no_grad():  # W₀ − Σ B_i A_i: negate every old up (this network is discarded)
            for layer in net.lora_layers.values():
                for branch in layer.branches.values():
                    for t in branch.targets:
                        branch.up(t).neg_()
        covs = collect_covariances(net, ctx.train_batches(None), ctx.device)
        bases = {layer: drift_resistant_basis(cov, self.config.threshold).float() for layer, cov in covs.items()}
        return bases, {"design/drs_dim_mean": statistics.fmean(b.shape[1] for b in bases.values())}

    # -------------------------------------------------------------- training
    def begin_session(self, net: ContinualViT, ctx: "StepContext") -> list[nn.Parameter]:
        assert isinstance(net, LoRAMinusViT)
        net.freeze_all()
        net.classify_by_prototypes = False
        params = net.add_factor_branches(self.branch_name(ctx.session), ctx.generator("lora_init"))
        return params + self.add_session_heads(net, ctx)

    def training_hooks(self, net: ContinualViT, ctx: "StepContext") -> TrainingHooks:
        assert isinstance(net, LoRAMinusViT)
        bases = ctx.load("design")
        name = self.branch_name(ctx.session)
        projections: dict[nn.Parameter, tuple[Tensor, bool]] = {}
        for layer_name, layer in net.lora_layers.items():
            if layer_name not in bases:
                continue  # task 0: plain Adam
            proj = projector(bases[layer_name].double()).float().to(ctx.device)
            branch: FactorBranch = layer.branches[name]  # type: ignore[assignment]
            for t in branch.targets:
                projections[branch.up(t)] = (proj, True)
                projections[branch.down(t)] = (proj, False)
        return _DriftResistantHooks(net, projections, self.config.triplet_weight, self.config.triplet_margin)
