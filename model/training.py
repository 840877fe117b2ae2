"""Training, evaluation and measurement passes shared by every method.

The loops follow the reference implementation: the network stays in ``eval()``
mode while training (no dropout, frozen norms), only the parameters handed in
are optimised, and the loss is the cross-entropy over the session's own classes.

On an accelerator the training loop never waits for the device inside an
epoch: :func:`make_optimizer` builds the fused optimizer there, the loop keeps
the loss and accuracy as running sums on the device, and the finiteness of the
loss and of every gradient is one device flag handed to the optimizer as
``found_inf`` (the mechanism of ``torch.amp.GradScaler``): a step with a NaN or
Inf, and every later step of that epoch, changes no parameter and no optimizer
state; the epoch's end reads the flag and raises, naming the first such step.
On the CPU there is no device to wait for, and the loop checks each step as it
comes with the unfused optimizer (whose results the demo's numbers are).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .net import ContinualViT
from .train_spec import TrainSpec

__all__ = [
    "TrainSpec",
    "TrainingHooks",
    "NonFiniteTrainingError",
    "make_optimizer",
    "train_session",
    "predict",
    "collect_covariances",
    "probe_sq_norm",
    "autocast_context",
]

Batches = Iterable[tuple[Tensor, Tensor]]


class NonFiniteTrainingError(FloatingPointError):
    """Training produced a NaN or Inf loss or gradient; the message says where."""


class TrainingHooks:
    """Points where a method plugs into the shared training loop (Avalanche's plugin pattern).

    The default hooks do nothing, so the loop is plain cross-entropy training.
    A method overrides the ones it needs, e.g. an extra loss term (L2P's key
    pull, CODA-Prompt's orthogonality) or a gradient transform before the step.
    """

    def extra_loss(self, net: nn.Module, logits: Tensor, targets: Tensor) -> Tensor | None:
        """A term added to the cross-entropy of the batch (``None``: nothing)."""
        return None

    def before_batch(self, net: nn.Module, images: Tensor, targets: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Called with each batch (on the device, session-local targets) before its forward:
        room for an optimisation step of the method's own (CL-LoRA's distillation step)."""

    def before_optimizer_step(self, net: nn.Module, params: list[nn.Parameter]) -> None:
        """Called after ``backward`` and before ``optimizer.step`` (e.g. project gradients)."""

    def after_optimizer_step(self, net: nn.Module, params: list[nn.Parameter]) -> None:
        """Called after ``optimizer.step`` (e.g. project the step itself, as LoRA⁻ projects Adam's update)."""

    def after_epoch(self, net: nn.Module, epoch: int) -> None:
        """Called at the end of every epoch, before the scheduler steps."""


def reference_cosine(epochs: int, delay: int = 0) -> Callable[[int], float]:
    """LR factor of the reference code's ``CosineSchedule``: cos(99π·e' / (200·(K−1))), e' = max(e − delay, 0)."""
    if epochs <= 1:
        return lambda epoch: 1.0
    return lambda epoch: math.cos(99 * math.pi * max(epoch - delay, 0) / (200 * (epochs - 1)))


def make_optimizer(
    params: list[nn.Parameter], spec: TrainSpec, head_params: Iterable[nn.Parameter] = (), *, fused: bool = False
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Optimizer and per-epoch scheduler as the reference code builds them.

    Args:
        params: every trainable parameter.
        spec: optimiser settings.
        head_params: the subset of ``params`` that gets ``spec.head_lr`` (when set).
        fused: the fused implementation, which skips a step on a device-side
            ``found_inf`` flag; :func:`train_session` then never waits for the
            device inside an epoch. Its results differ from the unfused one's
            in the last bits (one float32 ulp per step, measured on Adam).
    """
    if not params:
        raise ValueError("nothing to train: the method returned no trainable parameter")
    groups: list[dict] = [{"params": params}]
    if spec.head_lr is not None:
        heads = {id(p) for p in head_params}
        groups = [g for g in ({"params": [p for p in params if id(p) not in heads]},
                              {"params": [p for p in params if id(p) in heads], "lr": spec.head_lr}) if g["params"]]
    if spec.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            groups, lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.999), fused=fused or None
        )
    else:
        opt = torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, fused=fused or None)
    sched: torch.optim.lr_scheduler.LRScheduler
    if spec.scheduler == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)
    elif spec.scheduler == "multistep":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(spec.milestones), gamma=spec.gamma)
    elif spec.optimizer == "adam":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, reference_cosine(spec.epochs, spec.scheduler_delay))
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.epochs)
    return opt, sched


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast where asked for and supported; a no-op otherwise."""
    if precision == "bf16" and (device.type == "cpu" or torch.cuda.is_bf16_supported()):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_session(
    net: ContinualViT,
    params: list[nn.Parameter],
    batches: Batches,
    spec: TrainSpec,
    *,
    head_names: list[str],
    class_offset: int,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    start_epoch: int = 0,
    on_epoch_end: Callable[[int, float, float], None] | None = None,
    hooks: TrainingHooks | None = None,
    where: str = "session",
) -> list[float]:
    """Train ``params`` for the remaining epochs of one session.

    Args:
        net: the network; kept in ``eval()`` mode as in the reference code.
        params: the trainable parameters (current up-projections and heads).
        batches: re-iterable ``(images, global_labels)`` batches of the session.
        spec: optimiser settings.
        head_names: heads of the session; the loss uses their logits only.
        class_offset: global label of the session's first class.
        device: compute device.
        optimizer, scheduler: resume state (built from ``spec`` when ``None``).
        start_epoch: first epoch to run (for a resumed session).
        on_epoch_end: called as ``(epoch, mean_loss, train_accuracy)``, e.g. to checkpoint.
        hooks: the method's plug-ins (extra loss, gradient transform, per-epoch work).
        where: names the session in errors (``"task 3"``).

    Returns:
        Mean training loss of each epoch run.

    Raises:
        NonFiniteTrainingError: at the first NaN/Inf loss or gradient, naming
            ``where``, the epoch, the step and the learning rate; nothing of that
            step is applied.
    """
    if optimizer is None or scheduler is None:
        optimizer, scheduler = make_optimizer(params, spec, fused=device.type != "cpu")
    hooks = hooks or TrainingHooks()
    deferred = bool(optimizer.defaults.get("fused"))
    net.eval()
    forward = torch.compile(net) if spec.compile else net
    losses: list[float] = []
    for epoch in range(start_epoch, spec.epochs):
        lr = optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        flags = _StepFlags(device) if deferred else None
        seen = 0
        for step, (images, labels) in enumerate(batches):
            images = images.to(device, non_blocking=True)
            targets = labels.to(device, non_blocking=True) - class_offset
            hooks.before_batch(net, images, targets, optimizer)
            count = targets.shape[0]
            if spec.compile and count < spec.batch_size:  # one shape for every batch: compiled once
                images = torch.cat([images, images.new_zeros((spec.batch_size - count, *images.shape[1:]))])
            with autocast_context(device, spec.precision):
                logits = forward(images, head_names)[:count]
            loss = F.cross_entropy(logits.float(), targets)
            extra = hooks.extra_loss(net, logits, targets)
            if extra is not None:
                loss = loss + extra
            if flags is None and not torch.isfinite(loss.detach()):
                raise NonFiniteTrainingError(f"{where}: training loss is {float(loss.detach()):g} at epoch {epoch}, step {step} (lr {lr:g}); lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            hooks.before_optimizer_step(net, params)
            if flags is None:
                if not _grads_finite(params):
                    raise NonFiniteTrainingError(f"{where}: a gradient is NaN or Inf at epoch {epoch}, step {step} (lr {lr:g}); lower train.lr")
                optimizer.step()
            else:
                flags.check(step, loss.detach(), params)
                optimizer.found_inf, optimizer.grad_scale = flags.skip, None  # read by the fused step
                try:
                    optimizer.step()
                finally:
                    del optimizer.found_inf, optimizer.grad_scale
            hooks.after_optimizer_step(net, params)
            loss_sum += loss.detach().double() * count
            correct += (logits.argmax(dim=1) == targets).sum()
            seen += count
        if flags is not None:  # the epoch's one synchronisation
            flags.raise_if_bad(where, epoch, lr)
        if seen == 0:
            raise ValueError("the session has no training samples")
        hooks.after_epoch(net, epoch)
        scheduler.step()
        mean_loss = float(loss_sum) / seen
        losses.append(mean_loss)
        if on_epoch_end is not None:
            on_epoch_end(epoch, mean_loss, int(correct) / seen)
    return losses


class _StepFlags:
    """Device-side record of non-finite steps in an epoch, read once at its end.

    ``skip`` (float 0/1, the ``found_inf`` of the fused optimizers) turns 1 at
    the first step with a NaN/Inf loss or gradient and stays 1 for the rest of
    the epoch, so the parameters stay those before that step, as when the loop
    stopped there at once.
    """

    def __init__(self, device: torch.device) -> None:
        self.skip = torch.zeros((), device=device)
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.loss_bad = torch.zeros((), dtype=torch.bool, device=device)

    def check(self, step: int, loss: Tensor, params: list[nn.Parameter]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        found = torch.zeros((), device=self.skip.device)
        if grads:  # GradScaler's fused check; multiplying by 1 leaves the gradients as they are
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones((), device=found.device))
        loss_bad = ~torch.isfinite(loss)
        bad = torch.maximum(found, loss_bad.float())
        new = (bad > 0) & (self.first < 0)
        self.first = torch.where(new, step, self.first)
        self.loss_bad = self.loss_bad | (new & loss_bad)
        self.skip = torch.maximum(self.skip, bad)

    def raise_if_bad(self, where: str, epoch: int, lr: float) -> None:
        step = int(self.first)
        if step >= 0:
            what = "training loss" if bool(self.loss_bad) else "a gradient"
            raise NonFiniteTrainingError(
                f"{where}: {what} is NaN or Inf at epoch {epoch}, step {step} (lr {lr:g}); "
                "that step and the rest of the epoch were not applied; lower train.lr"
            )


def _grads_finite(params: list[nn.Parameter]) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


@torch.no_grad()
def predict(net: ContinualViT, batches: Batches, device: torch.device, precision: str = "fp32") -> tuple[Tensor, Tensor]:
    """Class-incremental predictions: argmax over the concatenated heads of all seen tasks.

    Returns:
        ``(predictions, labels)``, both ``(N,)`` int64 on the CPU.
    """
    net.eval()
    preds, targets = [], []
    for images, labels in batches:
        with autocast_context(device, precision):
            logits = net(images.to(device, non_blocking=True))
        preds.append(logits.argmax(dim=1).cpu())
        targets.append(labels.cpu())
    if not preds:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(preds), torch.cat(targets)


@torch.no_grad()
def collect_covariances(net: ContinualViT, batches: Batches, device: torch.device) -> dict[str, Tensor]:
    """One pass over ``batches``: the mean of ``x xᵀ`` at every wrapped layer's input.

    The per-batch products run on ``device`` in float32 and accumulate in float64.
    """
    net.eval()
    with net.collecting_covariance():
        for images, _ in batches:
            net.features(images.to(device, non_blocking=True))
    return net.covariances()


@torch.no_grad()
def probe_sq_norm(net: ContinualViT, probes: Mapping[str, nn.Module], batches: Batches, device: torch.device) -> float:
    """Mean squared output norm per token of the probe branches over ``batches``."""
    net.eval()
    with net.probing(probes):  # type: ignore[arg-type]
        for images, _ in batches:
            net.features(images.to(device, non_blocking=True))
        return net.probe_mean_sq_norm()
