"""Subspace design and DualGPM memory for InfLoRA.

InfLoRA (Liang & Li, CVPR 2024) keeps a memory of the input space that old tasks
used at every LoRA-wrapped layer and designs each new task's down-projection
(paper ``B_t``) inside the orthogonal complement of that space, so that the new
branch ``A_t B_t`` cannot change the layer's output on old tasks' inputs.

The memory is the DualGPM of Liang & Li: it stores an orthonormal basis ``M`` of
the old-task input space while its rank is small and switches to a basis of the
orthogonal complement ``M⊥`` once the rank exceeds half the dimension, which
keeps the stored matrix at most ``d × d/2``. ``projector()`` is the same either
way: the ``d × d`` orthogonal projector onto the old-task space.

The energy criterion follows the reference implementation (``update_DualGPM`` of
liangyanshuo/InfLoRA) exactly, so that the published thresholds transfer: the
energies are the *squared singular values of the covariance matrix* ``C``.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "threshold_schedule",
    "SubspaceMemory",
    "design_down_projection",
    "SubspaceError",
    "memory_bank_state",
    "memory_bank_from_state",
]

_logger = logging.getLogger(__name__)

MemoryMode = Literal["memory", "complement"]

# Singular values below this fraction of the largest are treated as zero: the
# directions behind them are arbitrary (any basis of a null space) and must not
# enter the memory or a designed down-projection.
_RELATIVE_TOL = 1e-10


class SubspaceError(ValueError):
    """A subspace request that cannot be met (bad rank, bad threshold, bad shape)."""


def threshold_schedule(task: int, num_tasks: int, lamb: float, lame: float = 1.0) -> float:
    """Energy threshold ε_t = lamb + (lame − lamb)·t/T of the memory update after task t.

    Args:
        task: task index counted from 0.
        num_tasks: total number of tasks T of the sequence.
        lamb: threshold after the first task, in (0, 1].
        lame: threshold the schedule moves towards, in (0, 1] (paper: 1.0).

    Returns:
        The threshold for the memory update that follows ``task``.
    """
    if num_tasks < 1:
        raise SubspaceError(f"num_tasks must be >= 1, got {num_tasks}")
    if not 0 <= task < num_tasks:
        raise SubspaceError(f"task must be in [0, {num_tasks}), got {task}")
    for name, value in (("lamb", lamb), ("lame", lame)):
        if not 0.0 < value <= 1.0:
            raise SubspaceError(f"{name} must be in (0, 1], got {value}")
    return lamb + (lame - lamb) * task / num_tasks


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise SubspaceError(f"threshold must be in (0, 1], got {threshold}")


def _check_cov(cov: Tensor, dim: int) -> Tensor:
    if cov.shape != (dim, dim):
        raise SubspaceError(f"covariance must have shape ({dim}, {dim}), got {tuple(cov.shape)}")
    cov = cov.detach().to(dtype=torch.float64, device="cpu")
    if not torch.isfinite(cov).all():
        raise SubspaceError("covariance contains NaN or Inf")
    return cov


def _significant(singular_values: Tensor) -> int:
    """Number of singular values that are numerically non-zero."""
    if singular_values.numel() == 0 or singular_values[0] <= 0:
        return 0
    return int((singular_values > singular_values[0] * _RELATIVE_TOL).sum())


class SubspaceMemory:
    """DualGPM memory of one layer's old-task input space.

    Stores an orthonormal basis ``M`` (``d × k``) of the old-task input space while
    ``k <= d/2`` and a basis ``M⊥`` of its orthogonal complement once ``k > d/2``.
    The first update uses the same rule (the reference code keeps the first
    task's ``M`` and only *labels* it as complement; here the complement is stored).

    Args:
        dim: input dimension ``d`` of the layer.
        dual: switch to the complement when the rank exceeds ``d/2`` (DualGPM);
            ``False`` keeps plain GPM memory (the InfLoRA-b5 variant).
    """

    def __init__(self, dim: int, dual: bool = True) -> None:
        if dim < 1:
            raise SubspaceError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.dual = dual
        self.mode: MemoryMode = "memory"
        self.basis = torch.zeros(dim, 0, dtype=torch.float64)

    # ------------------------------------------------------------------ views
    @property
    def rank(self) -> int:
        """Dimension of the stored old-task input space."""
        stored = self.basis.shape[1]
        return stored if self.mode == "memory" else self.dim - stored

    @property
    def is_empty(self) -> bool:
        return self.rank == 0

    def projector(self) -> Tensor:
        """Orthogonal projector (``d × d``, float64) onto the old-task input space."""
        outer = self.basis @ self.basis.T
        if self.mode == "memory":
            return outer
        return torch.eye(self.dim, dtype=torch.float64) - outer

    def energy_captured(self, cov: Tensor) -> float:
        """Fraction ‖P C‖² / ‖C‖² of a covariance's energy inside the stored space."""
        cov = _check_cov(cov, self.dim)
        total = float(torch.linalg.matrix_norm(cov) ** 2)
        if total == 0.0:
            return 0.0
        return float(torch.linalg.matrix_norm(self.projector() @ cov) ** 2) / total

    # ---------------------------------------------------------------- update
    def update(self, cov: Tensor, threshold: float) -> int:
        """Add the directions of ``cov`` needed to reach ``threshold`` of its energy.

        Args:
            cov: ``(d, d)`` mean of ``x xᵀ`` over every token of the task's inputs.
            threshold: energy fraction ε_t in (0, 1] (see :func:`threshold_schedule`).

        Returns:
            The number of directions added to the old-task space.
        """
        _check_threshold(threshold)
        cov = _check_cov(cov, self.dim)
        total = float(torch.linalg.matrix_norm(cov) ** 2)
        if total == 0.0:
            _logger.warning("zero covariance: memory left unchanged")
            return 0
        before = self.rank
        if self.is_empty and self.mode == "memory":
            self._first_update(cov, total, threshold)
        elif self.mode == "memory":
            self._grow_memory(cov, total, threshold)
        else:
            self._shrink_complement(cov, total, threshold)
        if self.dual and self.mode == "memory" and self.rank > self.dim / 2:
            self._switch_to_complement()
        return self.rank - before

    def _first_update(self, cov: Tensor, total: float, threshold: float) -> None:
        u, s, _ = torch.linalg.svd(cov)
        ratio = s**2 / total
        k = int((torch.cumsum(ratio, 0) < threshold).sum())
        k = max(min(k, _significant(s)), 1)
        self.basis = u[:, :k].contiguous()

    def _grow_memory(self, cov: Tensor, total: float, threshold: float) -> None:
        residual = cov - self.basis @ (self.basis.T @ cov)
        u, s, _ = torch.linalg.svd(residual)
        captured = (total - float(torch.linalg.matrix_norm(residual) ** 2)) / total
        ratio = (s**2 / total).tolist()
        k = 0
        for r in ratio[: _significant(s)]:
            if captured >= threshold:
                break
            captured += r
            k += 1
        if k == 0:
            return
        self.basis = torch.cat([self.basis, u[:, :k]], dim=1)[:, : self.dim].contiguous()

    def _shrink_complement(self, cov: Tensor, total: float, threshold: float) -> None:
        inside = self.basis @ (self.basis.T @ cov)
        u, s, _ = torch.linalg.svd(inside)
        outside = float(torch.linalg.matrix_norm(inside) ** 2) / total
        ratio = (s**2 / total).tolist()
        k = 0
        for r in ratio[: min(_significant(s), self.basis.shape[1])]:
            if outside < 1.0 - threshold:
                break
            outside -= r
            k += 1
        if k == 0:
            return
        removed = u[:, :k]
        remainder = self.basis - removed @ (removed.T @ self.basis)
        keep = self.basis.shape[1] - k
        if keep == 0:
            self.basis = torch.zeros(self.dim, 0, dtype=torch.float64)
            return
        u_rem, _, _ = torch.linalg.svd(remainder, full_matrices=False)
        self.basis = u_rem[:, :keep].contiguous()

    def _switch_to_complement(self) -> None:
        k = self.basis.shape[1]
        u, _, _ = torch.linalg.svd(self.basis, full_matrices=True)
        self.basis = u[:, k:].contiguous()
        self.mode = "complement"
        _logger.debug("memory switched to complement storage (rank %d of %d)", self.rank, self.dim)

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Tensor]:
        """Tensors that restore this memory exactly (safetensors-friendly)."""
        return {
            "basis": self.basis.contiguous(),
            "complement": torch.tensor(int(self.mode == "complement")),
            "dual": torch.tensor(int(self.dual)),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> "SubspaceMemory":
        basis = state["basis"].to(torch.float64)
        memory = cls(basis.shape[0], dual=bool(int(state["dual"])))
        memory.basis = basis.contiguous()
        memory.mode = "complement" if int(state["complement"]) else "memory"
        return memory

    def __repr__(self) -> str:
        return f"SubspaceMemory(dim={self.dim}, rank={self.rank}, mode={self.mode!r}, dual={self.dual})"


def design_down_projection(cov: Tensor, memory: SubspaceMemory | None, rank: int) -> Tensor:
    """Design a new task's down-projection (paper ``B_t``) orthogonal to the memory.

    Returns the top-``rank`` left singular vectors of ``(I − P) C`` as orthonormal
    rows, ``P`` the memory's projector. Where ``(I − P) C`` has fewer than
    ``rank`` numerically non-zero singular values (inputs that span few
    directions) the remaining rows are completed with an orthonormal basis of the
    free space ``range(I − P)``: an SVD would return arbitrary null-space vectors
    there, which may lie inside the memory and break the interference guarantee.

    Args:
        cov: ``(d, d)`` input covariance of the new task at this layer.
        memory: old-task memory of the layer, or ``None`` for the first task.
        rank: number of rows ``r``.

    Returns:
        ``(r, d)`` float64 tensor with orthonormal rows, orthogonal to the memory.
        The reference code's 1/√3 scale is *not* applied here (see ``model.lora``).
    """
    dim = cov.shape[0]
    cov = _check_cov(cov, dim)
    free = dim - (memory.rank if memory is not None else 0)
    if memory is not None and memory.dim != dim:
        raise SubspaceError(f"memory has dim {memory.dim} but the covariance has dim {dim}")
    if rank < 1:
        raise SubspaceError(f"LoRA rank must be >= 1, got {rank}")
    if rank > free:
        raise SubspaceError(
            f"LoRA rank {rank} is larger than the {free} input dimensions left outside the "
            f"old-task memory (dim {dim}, memory rank {dim - free}); lower the rank or the threshold lamb"
        )
    free_projector = torch.eye(dim, dtype=torch.float64)
    if memory is not None and not memory.is_empty:
        free_projector = free_projector - memory.projector()
    u, s, _ = torch.linalg.svd(free_projector @ cov)
    k = min(_significant(s), rank)
    rows = u[:, :k]
    if k < rank:
        rest = free_projector - rows @ rows.T
        eigvals, eigvecs = torch.linalg.eigh(rest)
        rows = torch.cat([rows, eigvecs[:, -(rank - k):].flip(1)], dim=1)
    return rows.T.contiguous()


def memory_bank_state(bank: "dict[str, SubspaceMemory]") -> dict[str, Tensor]:
    """Flatten per-layer memories into one safetensors-friendly dict (``"<layer>/basis"``)."""
    return {f"{layer}/{key}": value for layer, memory in bank.items() for key, value in memory.state_dict().items()}


def memory_bank_from_state(state: "dict[str, Tensor]") -> "dict[str, SubspaceMemory]":
    """Inverse of :func:`memory_bank_state`."""
    grouped: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        layer, name = key.rsplit("/", 1)
        grouped.setdefault(layer, {})[name] = value
    return {layer: SubspaceMemory.from_state_dict(tensors) for layer, tensors in grouped.items()}
