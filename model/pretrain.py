"""Supervised pretraining of a small ViT backbone, for CPU-scale experiments.

InfLoRA assumes a pretrained backbone (ViT-B/16 on ImageNet-21k in the paper).
No ViT weights can be downloaded where the CPU demo runs, so the demo pretrains
a tiny timm ViT itself, on data disjoint from the continual tasks, and then
loads the result like any local checkpoint. Deterministic for a given generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["pretrain_classifier", "random_shift"]


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero-padded crop), a light augmentation."""
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=float(images.min()))
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def pretrain_classifier(
    backbone: nn.Module,
    num_classes: int,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    generator: torch.Generator,
    device: torch.device = torch.device("cpu"),
    max_shift: int = 1,
    on_epoch_end: Callable[[int, float, float], None] | None = None,
) -> dict[str, float]:
    """Train ``backbone`` + a temporary linear head on ``train``; report test accuracy.

    Args:
        backbone: headless timm ViT (its parameters are made trainable here).
        num_classes: classes of the pretraining data.
        train, test: ``(images, labels)`` tensors.
        epochs, lr, batch_size, weight_decay: AdamW with a cosine schedule and 1 warm-up epoch.
        generator: source of every random choice (init of the head, shuffles, shifts).
        on_epoch_end: ``(epoch, mean_loss, test_accuracy)`` callback.

    Returns:
        ``{"train_loss": …, "test_accuracy": …}`` of the last epoch. The backbone
        is left frozen and in ``eval()`` mode.
    """
    backbone.to(device).requires_grad_(True)
    head = nn.Linear(backbone.num_features, num_classes).to(device)  # type: ignore[attr-defined]
    with torch.no_grad():
        nn.init.normal_(head.weight, std=0.02, generator=generator)
        head.bias.zero_()
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train[1]) / batch_size)
    total = epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < steps_per_epoch:
            return (step + 1) / steps_per_epoch
        return 0.5 * (1 + math.cos(math.pi * (step - steps_per_epoch) / max(1, total - steps_per_epoch)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    x_train, y_train = train
    result = {"train_loss": float("nan"), "test_accuracy": float("nan")}
    for epoch in range(epochs):
        backbone.train()
        order = torch.randperm(len(y_train), generator=generator)
        total_loss = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            images = random_shift(x_train[idx], max_shift, generator).to(device)
            labels = y_train[idx].to(device)
            loss = F.cross_entropy(head(backbone(images)), labels, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
        accuracy = evaluate_classifier(backbone, head, test, batch_size, device)
        result = {"train_loss": total_loss / len(order), "test_accuracy": accuracy}
        if on_epoch_end is not None:
            on_epoch_end(epoch, result["train_loss"], accuracy)
    backbone.eval().requires_grad_(False)
    return result


@torch.no_grad()
def evaluate_classifier(backbone: nn.Module, head: nn.Module, data: tuple[Tensor, Tensor], batch_size: int, device: torch.device) -> float:
    backbone.eval()
    x, y = data
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = head(backbone(x[start : start + batch_size].to(device)))
        correct += int((logits.argmax(1).cpu() == y[start : start + batch_size]).sum())
    return correct / max(1, len(y))


