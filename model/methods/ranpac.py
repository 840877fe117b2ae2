"""RanPAC: random projections and pre-trained models (McDonnell et al., NeurIPS 2023).

Follows the official code ``RanPAC/RanPAC``, ``RanPAC.py`` (class ``Learner``):

* ``_train`` / ``_init_train`` (Phase 1): in the **first session only**, a
  parameter-efficient module and a head are trained on the first task with SGD
  (momentum 0.9, ``body_lr`` 0.01, weight decay 5e-4, ``CosineAnnealingLR`` to
  ``min_lr`` 0), then the backbone is frozen for good (``freeze_backbone``).
  Here the module is a LoRA branch on the q and v rows of every block's ``qkv``
  (down and up both trained; see the departures below).
* ``setup_RP``: once, after Phase 1, ``W_rand = randn(d, M)`` (M = 10,000) and
  ``G = 0`` (M × M), ``Q = 0`` (M × classes).
* ``replace_fc`` (Phase 2, every session, the first included): one pass over the
  session's training images with test-time transforms; ``h = relu(f W_rand)``;
  ``Q += hᵀ y`` (one-hot labels: the class prototypes), ``G += hᵀ h`` (the Gram
  matrix); the head becomes ``W_o = ((G + λI)⁻¹ Q)ᵀ`` (``torch.linalg.solve``)
  and the logits are ``relu(f W_rand) W_oᵀ`` (``CosineLinear.forward`` with
  ``use_RP``). ``M = 0`` is the official "no RP" ablation: ``h = f``.
* ``optimise_ridge_parameter``: λ ∈ {10⁻⁸, …, 10⁸}, chosen afresh in every
  session on the **session's own** samples: fit on the first 80 % of a shuffled
  pass, the λ with the least mean squared error on the last 20 % wins.

The statistics pass is its own step (``stats``), declared for every session;
``train`` runs in the first session only (``Step(sessions="first")``), so a
later session trains nothing and holds no zero-epoch training stage.

Departures (README, "RanPAC"): the Phase-1 module is LoRA (q, v; rank
``method.ranpac.rank``), not AdaptFormer/SSF/VPT — the official args choose AdaptFormer
for CIFAR-100 and CUB and SSF for ImageNet-R/A; the Phase-1 head is a plain
linear head (official: ``CosineLinear``, cosine logits times a learned σ), and
the network stays in ``eval()`` mode (official ``train()``: no dropout or drop
path in ViT-B/16 either way); the held-out 20 % is drawn from the stage's own
generator, not the loader's shuffle; the solves run in float64 (official:
float32), G and Q are accumulated in float64 per session and stored in float32.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..heads import TaskHeads
from ..net import ContinualViT
from .base import ContinualMethod, Step, head_name
from .config import BlocksSpec
from .config.ranpac import OFFICIAL_RIDGES, RanPACConfig
from .registry import register_method
from .results import StepResult

if TYPE_CHECKING:
    from .context import Batches, StepContext

__all__ = [
    "RanPAC",
    "RanPACConfig",
    "RanPACViT",
    "OFFICIAL_RIDGES",
    "random_features",
    "collect_features",
    "ridge_solve",
    "select_ridge",
]

ADAPT_BRANCH = "adapt"
"""Name of the Phase-1 LoRA branch."""


# ---------------------------------------------------------------------- numerics
def random_features(features: Tensor, projection: Tensor | None) -> Tensor:
    """``relu(f W)`` (``CosineLinear.forward`` with ``use_RP``); ``f`` itself without a projection.

    Args:
        features: ``(N, d)`` backbone features.
        projection: ``(d, M)`` random matrix, or ``None`` (M = 0).
    """
    if projection is None:
        return features
    return F.relu(features @ projection.to(features.dtype))


@torch.no_grad()
def collect_features(net: ContinualViT, batches: "Batches", device: torch.device) -> tuple[Tensor, Tensor]:
    """One pass: the final features ``(N, d)`` (float32, CPU) and labels ``(N,)`` of ``batches``."""
    net.eval()
    feats, labels = [], []
    for images, y in batches:
        feats.append(net.features(images.to(device, non_blocking=True)).float().cpu())
        labels.append(y.cpu())
    if not feats:
        raise ValueError("the statistics pass saw no sample")
    return torch.cat(feats), torch.cat(labels)


def ridge_solve(gram: Tensor, prototypes: Tensor, ridge: float) -> Tensor:
    """Head weights ``W_o = ((G + λI)⁻¹ Q)ᵀ``, ``(C, M)``, solved in float64.

    Args:
        gram: ``(M, M)`` Gram matrix ``Σ hᵀh``.
        prototypes: ``(M, C)`` ``Σ hᵀy``.
        ridge: λ.
    """
    g = gram.double()
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    return torch.linalg.solve(g + ridge * eye, prototypes.double()).T


def select_ridge(h: Tensor, y: Tensor, ridges: list[float], val_fraction: float) -> tuple[float, list[float]]:
    """The λ whose fit on the first samples predicts the last ones best (``optimise_ridge_parameter``).

    Args:
        h: ``(N, M)`` random features, already in a random order.
        y: ``(N, C)`` one-hot targets.
        ridges: candidates, in order; ties go to the first.
        val_fraction: the last ``N − int(N (1 − val_fraction))`` samples score.

    Returns:
        ``(λ, mean squared error of every candidate)``.
    """
    n_fit = int(h.shape[0] * (1.0 - val_fraction))
    if n_fit < 1 or n_fit >= h.shape[0]:
        raise ValueError(f"cannot hold out {val_fraction} of {h.shape[0]} samples to choose the ridge parameter")
    fit, val = h[:n_fit].double(), h[n_fit:].double()
    gram, protos = fit.T @ fit, fit.T @ y[:n_fit].double()
    losses = [float(F.mse_loss(val @ ridge_solve(gram, protos, r).T, y[n_fit:].double())) for r in ridges]
    best = min(range(len(ridges)), key=lambda i: (losses[i], i))
    return float(ridges[best]), losses


# ---------------------------------------------------------------------- network
class RanPACViT(ContinualViT):
    """:class:`ContinualViT` whose heads, once installed, read the random features ``relu(f W)``.

    Before :meth:`install_classifier` (Phase 1) it is a plain continual ViT
    with linear heads on ``f``.
    """

    def __init__(self, backbone: nn.Module, lora_blocks) -> None:
        super().__init__(backbone, lora_blocks)
        self.register_buffer("projection", None, persistent=False)  # (d, M); follows .to(device), never saved
        self.classifier_installed = False

    def install_classifier(self, projection: Tensor | None, weights: dict[str, Tensor]) -> None:
        """Replace the heads by the ridge heads ``weights`` (head name → ``(C_t, M)``) on ``relu(f W)``."""
        device = self.heads._device_anchor.device
        width = int(projection.shape[1]) if projection is not None else self.embed_dim
        heads = TaskHeads(width).to(device)
        for name in sorted(weights):
            w = weights[name]
            layer = heads.add(name, int(w.shape[0]), generator=torch.Generator())  # init overwritten below
            with torch.no_grad():
                layer.weight.copy_(w)
                layer.bias.zero_()
        heads.requires_grad_(False)
        self.heads = heads
        self.projection = None if projection is None else projection.to(device)
        self.classifier_installed = True

    def forward(self, x: Tensor, heads: list[str] | None = None) -> Tensor:
        f = self.features(x)
        if self.classifier_installed:
            f = random_features(f.float(), self.projection)
        return self.heads(f, heads)


# ---------------------------------------------------------------------- method
@register_method
class RanPAC(ContinualMethod):
    """Phase 1 on the first task, then a random-projection ridge classifier grown by statistics only."""

    name = "ranpac"
    config_class = RanPACConfig
    config: RanPACConfig

    def steps(self) -> list[Step]:
        steps = [Step("train", writes=("adapter",), sessions="first", uploads=("adapter",))] if self.config.adapt_first_session else []
        return steps + [
            Step("stats", needs=("train",), writes=("projection", "stats", "classifier")),
            Step("eval", needs=("stats",), ordered=True, carries_state=False),
        ]

    def lora_blocks(self) -> BlocksSpec:
        return self.config.blocks if self.config.adapt_first_session else []

    def build_net(self, backbone: nn.Module) -> RanPACViT:
        return RanPACViT(backbone, self.lora_blocks())

    def load_trained_state(self, net: ContinualViT, state: dict[str, Tensor]) -> None:
        net.load_adapter_state(state, train_down=True)  # Phase 1 trains the down-projection too

    def restore(self, net: ContinualViT, ctx: "StepContext", sessions_done: int) -> None:
        """The Phase-1 branch (once the first session has run) and the ridge heads of session ``sessions_done − 1``."""
        assert isinstance(net, RanPACViT)
        if sessions_done < 1:
            return
        self._load_branch(net, ctx)
        classifier = ctx.load("classifier", sessions_done - 1)
        net.install_classifier(self._projection(ctx), {k.split(".")[1]: v for k, v in classifier.items()})

    def _load_branch(self, net: ContinualViT, ctx: "StepContext") -> None:
        if self.config.adapt_first_session:
            branch = {k: v for k, v in ctx.load("adapter", 0).items() if k.startswith("lora.")}
            self.load_trained_state(net, branch)

    def _projection(self, ctx: "StepContext") -> Tensor | None:
        if self.config.projection_dim == 0:
            return None
        return ctx.load("projection", 0)["projection"]

    # ------------------------------------------------------------ Phase 1
    def begin_session(self, net: ContinualViT, ctx: "StepContext") -> list[nn.Parameter]:
        """A LoRA branch (down drawn as ``nn.Linear`` weights, up zero) and the first task's head."""
        net.freeze_all()
        generator = ctx.generator("lora_init")
        downs = {}
        for name, layer in net.lora_layers.items():
            down = torch.empty(self.config.rank, layer.in_features)
            nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
            downs[name] = down.to(layer.base_layer.weight.device)
        net.add_branches(ADAPT_BRANCH, downs, train_down=True, targets=self.config.targets)
        return net.set_branch_trainable(ADAPT_BRANCH, True) + self.add_session_heads(net, ctx)

    def trained_state(self, net: ContinualViT, ctx: "StepContext") -> dict[str, Tensor]:
        return net.adapter_state([ADAPT_BRANCH], [head_name(t) for t in ctx.tasks])

    # ------------------------------------------------------------ Phase 2
    def step_stats(self, ctx: "StepContext") -> StepResult:
        """``replace_fc``: accumulate G and Q over the session's samples, choose λ, solve the ridge heads."""
        net = ctx.build_net(ctx.session)
        if ctx.session == 0:
            self._load_branch(net, ctx)
            if self.config.projection_dim:
                d, m = net.embed_dim, self.config.projection_dim
                ctx.save("projection", {"projection": torch.randn(d, m, generator=ctx.generator("projection"))})
        projection = self._projection(ctx)
        feats, labels = collect_features(net, ctx.measure_batches(ctx.tasks), ctx.device)
        seen = ctx.seen_tasks()
        num_classes = sum(len(ctx.task_labels(t)) for t in seen)
        device = ctx.device
        h = random_features(feats.to(device), None if projection is None else projection.to(device)).double()
        y = F.one_hot(labels.to(device), num_classes).double()
        gram, protos = h.T @ h, h.T @ y
        if ctx.session > 0:
            before = ctx.load("stats", ctx.session - 1)
            gram += before["gram"].to(device, torch.float64)
            protos[:, : before["prototypes"].shape[1]] += before["prototypes"].to(device, torch.float64)
        gram, protos = gram.float(), protos.float()  # as stored: the heads are solved from the saved state
        order = torch.randperm(h.shape[0], generator=ctx.generator("ridge_holdout")).to(device)
        ridge, losses = select_ridge(h[order], y[order], list(self.config.ridges), self.config.ridge_val_fraction)
        weights = ridge_solve(gram, protos, ridge).float().cpu()
        ctx.save("stats", {"gram": gram.cpu(), "prototypes": protos.cpu()})
        heads, start = {}, 0
        for t in seen:
            n = len(ctx.task_labels(t))
            heads[f"head.{head_name(t)}.weight"] = weights[start : start + n].contiguous()
            start += n
        ctx.save("classifier", heads)
        return StepResult(metrics={"ridge/lambda": ridge, "ridge/log10_lambda": math.log10(ridge)}, info={"ridge_val_mse": losses})
