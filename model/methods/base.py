"""The contract every continual method implements.

A run is a sequence of *sessions*; a session trains on one task (InfLoRA,
SD-LoRA, the prompt methods) or on several at once (joint training). A method
declares, for every session, its **steps** (:class:`Step`: ``design``,
``train``, ``update``, ``align``, ``eval`` or steps of its own) and what each
step persists as named **state slots** (safetensors files of the run
directory). The pipeline runs each step as a resumable stage through one
generic runner — marker → load state → run step → save → marker — and knows
nothing of any particular method.

A step is a method ``step_<name>(ctx) -> StepResult``; ``ctx`` is a
:class:`~model.methods.context.StepContext` (data, state slots, the network as
it stood after earlier sessions, seeded generators). ``train`` and ``eval`` are
provided here and shared by every method: the training loop takes the
method's :class:`~model.training.TrainingHooks` (an extra loss, a gradient
transform, work after each epoch), the Avalanche plugin pattern.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..evaluation import predict_with_tasks
from ..heads import linear_default_init
from ..net import ContinualViT
from ..subspace import SubspaceMemory
from ..training import TrainingHooks, make_optimizer, train_session
from .config import MethodConfig
from .results import EvalRow, StepResult

if TYPE_CHECKING:
    from .context import StepContext

__all__ = ["Step", "ContinualMethod", "MemoryBank", "head_name", "default_steps"]

MemoryBank = dict[str, SubspaceMemory]
"""Memory of every wrapped layer, keyed by layer name."""


def head_name(task: int) -> str:
    """Key of task ``task``'s head (``"task_003"``)."""
    return f"task_{task:03d}"


@dataclass(frozen=True)
class Step:
    """One step of a session.

    Args:
        name: the step (``design``, ``train``…); the method implements ``step_<name>``.
        needs: steps of the same session whose outputs it reads.
        writes: the state slots it saves (``session_XXX/<slot>.safetensors``).
        ordered: also waits for the same step of the previous session (evaluations
            are logged in session order).
        carries_state: later sessions read what it writes; the first steps of the
            next session wait for it. Evaluations carry none.
        sessions: the sessions it runs in: ``"all"``, ``"first"`` only (RanPAC's
            first-session adaptation) or ``"later"`` ones only. A step that does
            not run in a session is absent from it: no stage, no marker, and the
            steps that need it there do not wait for it.
        uploads: the slots of ``writes`` worth keeping beside the run's metrics (the
            tracker uploads them when the run ends); scratch slots stay in the run directory.
    """

    name: str
    needs: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    ordered: bool = False
    carries_state: bool = True
    sessions: Literal["all", "first", "later"] = "all"
    uploads: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.sessions not in ("all", "first", "later"):
            raise ValueError(f"Step {self.name!r}: sessions must be 'all', 'first' or 'later', got {self.sessions!r}")
        if not set(self.uploads) <= set(self.writes):
            raise ValueError(f"step {self.name!r} uploads {sorted(set(self.uploads) - set(self.writes))}, which it does not write")

    def runs_in(self, session: int) -> bool:
        """Whether the step is part of session ``session``."""
        return self.sessions == "all" or (self.sessions == "first") == (session == 0)


def default_steps() -> list[Step]:
    """``train`` then ``eval``: what a method without design or memory runs."""
    return [
        Step("train", writes=("adapter",), uploads=("adapter",)),
        Step("eval", needs=("train",), ordered=True, carries_state=False),
    ]


class ContinualMethod(ABC):
    """Base class of a continual method; subclasses register with :func:`model.methods.register_method`.

    A method's name, settings and published figures are declared apart, without
    torch (``model/methods/config/<name>.py``); ``name`` and ``config_class``
    repeat the first two, and registering checks that they agree.

    Args:
        config: the method's own settings (an instance of ``config_class``).
    """

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig | None = None) -> None:
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise TypeError(f"method {self.name!r} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    # ------------------------------------------------------------ structure
    def sessions(self, num_tasks: int) -> list[list[int]]:
        """Which tasks each session trains on; one task per session by default."""
        return [[t] for t in range(num_tasks)]

    def steps(self) -> list[Step]:
        """The steps of every session, in order (a step may run in some sessions only: ``Step.sessions``)."""
        return default_steps()

    def session_steps(self, session: int) -> list[Step]:
        """The steps that run in session ``session``, in order."""
        return [step for step in self.steps() if step.runs_in(session)]

    def slot_writers(self) -> dict[str, str]:
        """State slot → the step that writes it."""
        return {slot: step.name for step in self.steps() for slot in step.writes}

    # -------------------------------------------------------------- network
    def lora_blocks(self) -> Any:
        """Blocks whose ``qkv`` get a LoRA wrapper: none, unless the method adds branches."""
        return []

    def build_net(self, backbone: nn.Module) -> ContinualViT:
        """The method's network around a (fresh copy of the) backbone."""
        return ContinualViT(backbone, self.lora_blocks())

    def restore(self, net: ContinualViT, ctx: "StepContext", sessions_done: int) -> None:
        """Load the state of sessions ``0 .. sessions_done - 1`` into ``net`` (later ones win)."""
        for s in range(sessions_done):
            self.load_trained_state(net, ctx.load("adapter", s))

    def load_trained_state(self, net: ContinualViT, state: dict[str, Tensor]) -> None:
        """Load what :meth:`trained_state` saved (an ``adapter`` slot or a mid-step checkpoint)."""
        net.load_adapter_state(state)

    def run_step(self, step: str, ctx: "StepContext") -> StepResult:
        fn = getattr(self, f"step_{step}", None)
        if fn is None:
            raise NotImplementedError(f"method {self.name!r} declares step {step!r} but has no step_{step}")
        return fn(ctx)

    # ------------------------------------------------------------- training
    @abstractmethod
    def begin_session(self, net: ContinualViT, ctx: "StepContext") -> list[nn.Parameter]:
        """Add the session's modules to ``net`` and return every parameter to train.

        The returned list holds the session's heads too (:meth:`add_session_heads`).
        """

    def add_session_heads(self, net: ContinualViT, ctx: "StepContext") -> list[nn.Parameter]:
        """Add the session's heads (initialised from the ``heads`` generator) and make them trainable."""
        params: list[nn.Parameter] = []
        generator = ctx.generator("heads")
        for head, num_classes in ctx.head_sizes().items():
            layer = net.heads.add(head, num_classes, generator=generator, init=self.init_head)
            layer.requires_grad_(True)
            params.extend(layer.parameters())
        return params

    def init_head(self, head: nn.Linear, generator: torch.Generator | None) -> None:
        """Initialise a new head: PyTorch's ``nn.Linear`` default (InfLoRA's heads); a method whose official head differs overrides this."""
        linear_default_init(head, generator)

    def training_hooks(self, net: ContinualViT, ctx: "StepContext") -> TrainingHooks:
        """The method's plug-ins into the shared training loop (none by default)."""
        return TrainingHooks()

    @abstractmethod
    def trained_state(self, net: ContinualViT, ctx: "StepContext") -> dict[str, Tensor]:
        """What the session's ``adapter`` slot holds: the tensors the session changed."""

    def step_train(self, ctx: "StepContext") -> StepResult:
        """The shared training step: the method's parameters, hooks and state; resumable per epoch."""
        spec = ctx.train
        net = ctx.build_net(ctx.session)
        params = self.begin_session(net, ctx)
        heads = [head_name(t) for t in ctx.tasks]
        head_params = [p for h in heads for p in net.heads.heads[h].parameters()]
        optimizer, scheduler = make_optimizer(params, spec, head_params, fused=ctx.device.type != "cpu")
        shuffle = ctx.generator("shuffle")
        history: list[dict[str, float]] = []
        start_epoch = 0
        state = ctx.load_checkpoint()
        if state is not None:
            self.load_trained_state(net, state["adapter"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            shuffle.set_state(state["shuffle_rng"])
            torch.set_rng_state(state["global_rng"])
            history = json.loads(bytes(state["history"].tolist()).decode())
            start_epoch = len(history)

        def on_epoch_end(epoch: int, loss: float, accuracy: float) -> None:
            history.append({"epoch": epoch, "loss": loss, "train_accuracy": accuracy})
            if epoch + 1 < spec.epochs:  # the last epoch is saved as the adapter itself
                ctx.save_checkpoint(
                    {
                        "adapter": self.trained_state(net, ctx),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "shuffle_rng": shuffle.get_state(),
                        "global_rng": torch.get_rng_state(),
                        "history": torch.tensor(list(json.dumps(history).encode()), dtype=torch.uint8),
                    }
                )

        train_session(
            net,
            params,
            ctx.train_batches(shuffle),
            spec,
            head_names=heads,
            class_offset=ctx.class_offset(ctx.tasks[0]),
            device=ctx.device,
            optimizer=optimizer,
            scheduler=scheduler,
            start_epoch=start_epoch,
            on_epoch_end=on_epoch_end,
            hooks=self.training_hooks(net, ctx),
            where=f"train.session_{ctx.session:03d} (tasks {ctx.tasks})",
        )
        ctx.save("adapter", self.trained_state(net, ctx))
        ctx.clear_checkpoint()
        return StepResult(epochs=history, trainable_parameters=int(sum(p.numel() for p in params)))

    # ----------------------------------------------------------- evaluation
    def step_eval(self, ctx: "StepContext") -> StepResult:
        """Accuracy on every seen task's test (and validation) split: row ``session`` of R.

        Besides the class-incremental accuracy (argmax over every seen head, the
        paper's), each test row holds the task-incremental accuracy (argmax within
        the task's own head) and the task-id accuracy (the argmax lies in the
        task's head), from the same pass. An empty split is not evaluated.
        """
        net = ctx.build_net(ctx.session + 1)
        seen = ctx.seen_tasks()
        heads = [head_name(t) for t in seen]
        rows = []
        for i, t in enumerate(seen):
            p = predict_with_tasks(net, ctx.eval_batches(t, "test"), ctx.device, heads, ctx.train.precision)
            count = len(p)
            extra = {}
            if count:
                extra = {"acc_task_il/test": _mean_equal(p.task_il, p.labels), "acc_task_id/test": _mean_equal(p.task_id, torch.full_like(p.task_id, i))}
            val = None
            if ctx.split_size(t, "val"):
                v = predict_with_tasks(net, ctx.eval_batches(t, "val"), ctx.device, heads, ctx.train.precision)
                val = _mean_equal(v.class_il, v.labels)
            rows.append(EvalRow(task=t, test=_mean_equal(p.class_il, p.labels) if count else math.nan, count=count, val=val, extra=extra))
        return StepResult(metrics=self.eval_metrics(net, ctx), eval=rows)

    def eval_metrics(self, net: ContinualViT, ctx: "StepContext") -> dict[str, float]:
        """Extra diagnostics of the evaluation (e.g. LoRA interference); none by default."""
        return {}


def _mean_equal(predictions: Tensor, labels: Tensor) -> float:
    """Share of equal entries, as a float32 mean (the accuracy the eval stage has always stored)."""
    return float((predictions == labels).float().mean())
