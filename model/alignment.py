"""Classifier alignment (the "+CA" of InfLoRA+CA, from SLCA, Zhang et al. 2023).

After each task the mean and covariance of the final features of the task's
classes are stored; from the second task on, every seen head is re-trained on
features *sampled* from those class-wise Gaussians, which re-balances the heads
of old and new tasks without storing any image. Follows the reference code's
``_stage2_compact_classifier``: SGD (lr 0.01, momentum 0.9, weight decay 5e-4),
5 epochs with a cosine schedule, 256 samples per class per epoch, old classes'
means shrunk by ``0.9 + 0.1·(t+1)/(T+1)``, optional per-task logit normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .net import ContinualViT
from .training import Batches

__all__ = ["AlignSpec", "class_feature_stats", "align_heads", "sample_gaussian"]

_COV_JITTER = 1e-4  # added to every class covariance, as the reference code does


@dataclass(frozen=True)
class AlignSpec:
    """Settings of the head re-training on sampled features."""

    epochs: int = 5
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    samples_per_class: int = 256
    logit_norm: float | None = 0.1


@torch.no_grad()
def class_feature_stats(net: ContinualViT, batches: Batches, device: torch.device) -> dict[int, tuple[Tensor, Tensor]]:
    """Per class (global label): mean ``(D,)`` and covariance ``(D, D)`` of the final features, float64."""
    net.eval()
    feats: dict[int, list[Tensor]] = {}
    for images, labels in batches:
        f = net.features(images.to(device)).double().cpu()
        for label in labels.unique().tolist():
            feats.setdefault(int(label), []).append(f[labels == label])
    stats = {}
    for label, chunks in feats.items():
        x = torch.cat(chunks)
        mean = x.mean(0)
        cov = torch.cov(x.T) if len(x) > 1 else torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        stats[label] = (mean, cov + torch.eye(x.shape[1], dtype=torch.float64) * _COV_JITTER)
    return stats


def sample_gaussian(mean: Tensor, cov: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` samples of N(mean, cov) drawn from ``generator`` (float32)."""
    jitter = 0.0
    for _ in range(8):
        try:
            chol = torch.linalg.cholesky(cov + jitter * torch.eye(len(mean), dtype=cov.dtype))
            break
        except RuntimeError:  # not positive definite: add a little more to the diagonal
            jitter = max(1e-6, jitter * 10)
    else:
        raise ValueError("class covariance is not positive definite even with jitter")
    z = torch.randn(n, len(mean), generator=generator, dtype=torch.float64)
    return (mean + z @ chol.T).float()


def align_heads(
    net: ContinualViT,
    stats: Mapping[int, tuple[Tensor, Tensor]],
    task_classes: Sequence[Sequence[int]],
    spec: AlignSpec,
    generator: torch.Generator,
    device: torch.device,
) -> list[float]:
    """Re-train every head of the seen tasks on features sampled from the class Gaussians.

    Args:
        net: the network; its heads are concatenated in task order.
        stats: per global label, (mean, covariance) of its features.
        task_classes: global labels of each seen task, in task order.
        spec: optimiser settings.
        generator: source of the samples and shuffles.

    Returns:
        Mean loss of each epoch.
    """
    heads = list(net.heads.heads.values())
    params = [p for h in heads for p in h.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.epochs)
    num_tasks = len(task_classes)
    sizes = [len(c) for c in task_classes]
    labels_seen = [c for cls in task_classes for c in cls]
    losses = []
    for _ in range(spec.epochs):
        xs, ys = [], []
        for t, classes in enumerate(task_classes):
            shrink = 0.9 + 0.1 * (t + 1) / num_tasks
            for c in classes:
                mean, cov = stats[c]
                xs.append(sample_gaussian(mean * shrink, cov, spec.samples_per_class, generator))
                ys.append(torch.full((spec.samples_per_class,), c, dtype=torch.long))
        x, y = torch.cat(xs), torch.cat(ys)
        order = torch.randperm(len(y), generator=generator)
        x, y = x[order].to(device), y[order].to(device)
        total = 0.0
        steps = len(labels_seen)
        for i in range(steps):
            xb = x[i * spec.samples_per_class : (i + 1) * spec.samples_per_class]
            yb = y[i * spec.samples_per_class : (i + 1) * spec.samples_per_class]
            logits = net.heads(xb)
            if spec.logit_norm is not None:
                norms = torch.stack([chunk.norm(p=2, dim=-1) + 1e-7 for chunk in logits.split(sizes, dim=-1)], dim=-1)
                logits = logits / norms.mean(dim=-1, keepdim=True) / spec.logit_norm
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        sched.step()
        losses.append(total / max(1, steps))
    for p in params:
        p.requires_grad_(False)
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError("classifier alignment diverged (NaN loss)")
    return losses
