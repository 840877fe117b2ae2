"""What a method's step may use: the :class:`StepContext` protocol.

The pipeline implements it over a run directory; tests may implement it in
memory. Everything here is plain torch: no Ray, no MLflow, no file layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Protocol

import torch
from torch import Tensor

from ..net import ContinualViT
from ..training import TrainSpec

__all__ = ["StepContext", "Batches", "derived_seed"]

Batches = Iterable[tuple[Tensor, Tensor]]


def derived_seed(seed: int, session: int, purpose: str) -> int:
    """A 63-bit seed derived from (run seed, session, purpose): every step's generators."""
    digest = hashlib.sha256(f"{seed}/{session}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class StepContext(Protocol):
    """The session a step runs in, its data and its state slots."""

    session: int
    """Index of the session."""
    tasks: list[int]
    """Tasks the session trains on."""
    num_sessions: int
    device: torch.device
    train: TrainSpec
    """Training settings of the run (``train`` section)."""

    def seen_tasks(self) -> list[int]:
        """Tasks of sessions ``0 .. session``, in order."""

    def previous_tasks(self) -> list[int]:
        """Tasks of sessions before this one."""

    def head_sizes(self) -> dict[str, int]:
        """Head name → number of classes, for the session's tasks."""

    def class_offset(self, task: int) -> int:
        """Global label of ``task``'s first class (labels follow the class order)."""

    def task_labels(self, task: int) -> list[int]:
        """Global labels of ``task``'s classes."""

    def generator(self, purpose: str) -> torch.Generator:
        """A CPU generator seeded from (run seed, session, ``purpose``)."""

    def build_net(self, sessions_done: int) -> ContinualViT:
        """The method's network after ``sessions_done`` sessions, rebuilt from saved state, frozen."""

    # data
    def train_batches(self, generator: torch.Generator | None) -> Batches:
        """The session's training data (train transforms), shuffled by ``generator`` (in order when ``None``)."""

    def measure_batches(self, tasks: list[int]) -> Batches:
        """Training samples of ``tasks`` with test-time transforms, in order (statistics passes)."""

    def eval_batches(self, task: int, part: str) -> Batches:
        """``task``'s ``"test"`` or ``"val"`` split."""

    def split_size(self, task: int, part: str) -> int:
        """Number of samples of ``task`` in ``part`` (``train``, ``val``, ``test``)."""

    # state
    def load(self, slot: str, session: int | None = None) -> dict[str, Tensor]:
        """The tensors of ``slot`` saved by ``session`` (this one when ``None``), integrity-checked."""

    def exists(self, slot: str, session: int) -> bool:
        """Whether ``session``'s step that writes ``slot`` has finished."""

    def save(self, slot: str, tensors: dict[str, Tensor]) -> None:
        """Save ``slot`` of this session (atomically; recorded in the step's marker)."""

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The mid-step checkpoint of this step, if one was saved."""

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        """Replace this step's mid-step checkpoint (tensors and plain values only)."""

    def clear_checkpoint(self) -> None:
        """Remove this step's mid-step checkpoint."""
