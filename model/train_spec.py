"""How one session is trained: the settings of the shared training loop (:mod:`model.training`).

Kept apart from the loop, which needs torch, so that a run config is validated
without importing it; :mod:`model.training` re-exports :class:`TrainSpec`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, ValidationInfo, field_validator

from .settings import Settings, setting

__all__ = ["TrainSpec"]


def _positive_epochs(milestones: list[int]) -> list[int]:
    if any(m < 1 for m in milestones):
        raise ValueError(f"must be positive epochs, got {milestones}")
    return milestones


class TrainSpec(Settings):
    """How one session is trained (paper defaults: Adam, lr 5e-4, batch 128).

    Args:
        optimizer: ``"adam"`` (cosine schedule of the reference code) or ``"sgd"``
            (momentum, ``CosineAnnealingLR``), as in the paper's DomainNet runs.
        lr: learning rate of the first session and of later sessions.
        epochs: epochs per session.
        batch_size: training batch size.
        weight_decay: L2 weight decay.
        momentum: SGD momentum.
        precision: ``"bf16"`` autocasts forward passes where the device supports it.
        scheduler: ``"cosine"`` (Adam: the reference's ``CosineSchedule``; SGD:
            ``CosineAnnealingLR``) or ``"multistep"`` (``MultiStepLR`` at
            ``milestones`` by ``gamma``, the reference's DomainNet schedule) or
            ``"constant"`` (SD-LoRA's official ``MultiStepLR`` at epoch 10000).
        head_lr: learning rate of the heads when it differs from ``lr`` (the
            reference's ``fc_lrate`` on DomainNet).
        compile: run the training forward through ``torch.compile``.
        scheduler_delay: epochs the schedule waits before it starts stepping:
            epoch e uses the factor of max(e − delay, 0). DualPrompt's and
            CODA-Prompt's official loops step only ``if epoch > 0`` (delay 1).
            Adam's cosine schedule only (one ``LambdaLR``).
    """

    optimizer: Literal["adam", "sgd"] = setting("adam", "adam (the reference's cosine schedule) or sgd (momentum)")
    lr: float = setting(5e-4, "learning rate", search=True, gt=0.0, allow_inf_nan=False)
    epochs: int = setting(20, "epochs per session", search=True, ge=1)
    batch_size: int = setting(128, "training batch size", ge=1)
    eval_batch_size: int = setting(256, "batch size of evaluation and statistics passes", ge=1)
    weight_decay: float = setting(0.0, "L2 weight decay", ge=0.0)
    momentum: float = setting(0.9, "SGD momentum", ge=0.0, lt=1.0)
    precision: Literal["fp32", "bf16"] = setting("fp32", "bf16 autocasts forward passes where the device supports it")
    scheduler: Literal["cosine", "multistep", "constant"] = setting("cosine", "per-epoch learning-rate schedule")
    milestones: Annotated[list[int], AfterValidator(_positive_epochs)] = setting([4], "epochs where multistep decays")
    gamma: float = setting(0.1, "multistep decay factor", gt=0.0, le=1.0)
    head_lr: float | None = setting(None, "learning rate of the heads when it differs from lr", gt=0.0)
    compile: bool = setting(False, "run the training forward through torch.compile")
    scheduler_delay: int = setting(0, "epochs before the schedule steps: epoch e uses the factor of max(e - delay, 0)", ge=0)

    @field_validator("scheduler_delay")
    @classmethod
    def _delay_on_adam_cosine(cls, delay: int, info: ValidationInfo) -> int:
        if delay and (info.data.get("optimizer"), info.data.get("scheduler")) != ("adam", "cosine"):
            raise ValueError("applies to the Adam cosine schedule (optimizer: adam, scheduler: cosine) only")
        return delay
