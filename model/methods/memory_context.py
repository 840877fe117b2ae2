"""A :class:`~model.methods.context.StepContext` held in memory, for tests and benchmarks.

It runs a method's steps on in-memory batches with no run directory, no
checksums and no Ray: the same method code the pipeline runs, in one process.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..net import ContinualViT
from ..training import TrainSpec
from .base import ContinualMethod, head_name
from .context import Batches, derived_seed
from .results import StepResult

__all__ = ["InMemoryContext"]


class InMemoryContext:
    """Every session's state slots kept in a dict; data given as lists of batches per task.

    Args:
        method: the method to run.
        backbone: the frozen backbone (copied for every network built).
        train_data: per task, re-iterable ``(images, global_labels)`` batches.
        test_data: per task, test batches (``train_data`` when ``None``).
        classes_per_task: number of classes of each task (labels are consecutive).
        train: training settings.
        seed: seeds every generator (with the session and the purpose).
    """

    def __init__(
        self,
        method: ContinualMethod,
        backbone: nn.Module,
        train_data: Sequence[Batches],
        classes_per_task: Sequence[int],
        train: TrainSpec,
        *,
        test_data: Sequence[Batches] | None = None,
        seed: int = 0,
        device: torch.device | None = None,
    ) -> None:
        self.method = method
        self.backbone = backbone
        self.train_data = list(train_data)
        self.test_data = list(test_data) if test_data is not None else self.train_data
        self.classes = list(classes_per_task)
        self.train = train
        self.seed = seed
        self.device = device or torch.device("cpu")
        self.sessions = method.sessions(len(self.train_data))
        self.num_sessions = len(self.sessions)
        self.store: dict[tuple[str, int], dict[str, Tensor]] = {}
        self.checkpoint: dict[str, Any] | None = None
        self.done: set[tuple[int, str]] = set()
        self.session, self.step = 0, ""
        self.tasks: list[int] = self.sessions[0]

    # ---------------------------------------------------------------- running
    def run(self, session: int, step: str) -> StepResult:
        """Run one step of one session."""
        self.session, self.step, self.tasks = session, step, self.sessions[session]
        result = self.method.run_step(step, self)
        self.done.add((session, step))
        return result

    def run_all(self) -> list[StepResult]:
        """Every step of every session, in order."""
        return [self.run(s, step.name) for s in range(self.num_sessions) for step in self.method.session_steps(s)]

    # ---------------------------------------------------------------- tasks
    def seen_tasks(self) -> list[int]:
        return [t for s in range(self.session + 1) for t in self.sessions[s]]

    def previous_tasks(self) -> list[int]:
        return [t for s in range(self.session) for t in self.sessions[s]]

    def head_sizes(self) -> dict[str, int]:
        return {head_name(t): self.classes[t] for t in self.tasks}

    def class_offset(self, task: int) -> int:
        return sum(self.classes[:task])

    def task_labels(self, task: int) -> list[int]:
        return list(range(self.class_offset(task), self.class_offset(task) + self.classes[task]))

    def generator(self, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(derived_seed(self.seed, self.session, purpose))

    def build_net(self, sessions_done: int) -> ContinualViT:
        net = self.method.build_net(copy.deepcopy(self.backbone))
        self.method.restore(net, self, sessions_done)
        net.freeze_all()
        return net.to(self.device)

    # ----------------------------------------------------------------- data
    def train_batches(self, generator: torch.Generator | None) -> Batches:
        batches = [b for t in self.tasks for b in self.train_data[t]]
        if generator is None:
            return batches
        return _Shuffled(batches, generator)

    def measure_batches(self, tasks: list[int]) -> Batches:
        return [b for t in tasks for b in self.train_data[t]]

    def eval_batches(self, task: int, part: str) -> Batches:
        return self.test_data[task] if part == "test" else []

    def split_size(self, task: int, part: str) -> int:
        data = self.train_data[task] if part == "train" else self.test_data[task] if part == "test" else []
        return sum(len(y) for _, y in data)

    # ---------------------------------------------------------------- state
    def load(self, slot: str, session: int | None = None) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self.store[(slot, self.session if session is None else session)].items()}

    def exists(self, slot: str, session: int) -> bool:
        return (slot, session) in self.store

    def save(self, slot: str, tensors: dict[str, Tensor]) -> None:
        self.store[(slot, self.session)] = {k: v.detach().cpu().clone() for k, v in tensors.items()}

    def load_checkpoint(self) -> dict[str, Any] | None:
        return copy.deepcopy(self.checkpoint)

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        self.checkpoint = copy.deepcopy(payload)

    def clear_checkpoint(self) -> None:
        self.checkpoint = None


class _Shuffled:
    """Batches in an order drawn from ``generator`` at every pass (a new epoch, a new order)."""

    def __init__(self, batches: list, generator: torch.Generator) -> None:
        self.batches = batches
        self.generator = generator

    def __iter__(self):
        for i in torch.randperm(len(self.batches), generator=self.generator).tolist():
            yield self.batches[i]

    def __len__(self) -> int:
        return len(self.batches)
