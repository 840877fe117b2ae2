"""InfLoRA+CA: InfLoRA with classifier alignment after every task (Liang & Li, CVPR 2024, Sec. 5).

Follows ``liangyanshuo/InfLoRA``, ``methods/inflora_ca.py`` (``_compute_mean``,
``_stage2_compact_classifier``): the branches are InfLoRA's, the memory is plain
GPM (``update_GPM``, so ``dual_memory`` defaults to false here), the class-wise
Gaussian statistics of the final features are kept and, from the second task
on, all heads are re-trained on sampled features (:mod:`model.alignment`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..alignment import AlignSpec, align_heads, class_feature_stats
from ..net import ContinualViT
from .base import Step
from .config.inflora_ca import InfLoRACAConfig
from .inflora import InfLoRA
from .registry import register_method
from .results import StepResult

if TYPE_CHECKING:
    from .context import StepContext

__all__ = ["InfLoRACA", "InfLoRACAConfig"]


@register_method
class InfLoRACA(InfLoRA):
    """InfLoRA + classifier alignment on sampled features."""

    name = "inflora_ca"
    config_class = InfLoRACAConfig
    config: InfLoRACAConfig

    def steps(self) -> list[Step]:
        design, train, update, evaluate = super().steps()
        align = Step("align", needs=("train",), writes=("class_stats", "aligned_heads"), uploads=("aligned_heads",))
        return [design, train, update, align, Step("eval", needs=("train", "align"), ordered=True, carries_state=False)]

    def restore(self, net: ContinualViT, ctx: "StepContext", sessions_done: int) -> None:
        super().restore(net, ctx, sessions_done)
        aligned = [s for s in range(sessions_done) if ctx.exists("aligned_heads", s)]
        if aligned:  # the heads as re-trained after the latest aligned session
            net.load_adapter_state(ctx.load("aligned_heads", aligned[-1]))

    def align_spec(self) -> AlignSpec:
        c = self.config
        return AlignSpec(epochs=c.ca_epochs, lr=c.ca_lr, samples_per_class=c.ca_samples_per_class, logit_norm=c.ca_logit_norm)

    def step_align(self, ctx: "StepContext") -> StepResult:
        net = ctx.build_net(ctx.session + 1)
        stats = class_feature_stats(net, ctx.measure_batches(ctx.tasks), ctx.device)
        ctx.save("class_stats", {f"{kind}/{label}": value[i] for label, value in stats.items() for i, kind in enumerate(("mean", "cov"))})
        for s in range(ctx.session):
            earlier = ctx.load("class_stats", s)
            for key in earlier:
                if key.startswith("mean/"):
                    label = int(key.split("/")[1])
                    stats[label] = (earlier[key], earlier[f"cov/{label}"])
        task_labels = [ctx.task_labels(t) for t in ctx.seen_tasks()]
        losses: list[float] = []
        if ctx.session > 0:  # one task: nothing to balance (as the reference code)
            losses = align_heads(net, stats, task_labels, self.align_spec(), ctx.generator("align"), ctx.device)
        ctx.save("aligned_heads", net.adapter_state([], list(net.heads.heads)))
        return StepResult(metrics={"align/final_loss": losses[-1]} if losses else {}, info={"losses": losses})
