"""Subspace numerics checked against their definitions."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from model.subspace import (
    SubspaceError,
    SubspaceMemory,
    design_down_projection,
    memory_bank_from_state,
    memory_bank_state,
    threshold_schedule,
)


def low_rank_cov(dim: int, rank: int, seed: int, decay: float = 0.7) -> torch.Tensor:
    """Covariance of data spanning ``rank`` random directions with decaying energies."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, rank, generator=g, dtype=torch.float64))
    energies = decay ** torch.arange(rank, dtype=torch.float64)
    return basis @ torch.diag(energies) @ basis.T


def full_cov(dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * dim, dim, generator=g, dtype=torch.float64) * torch.linspace(2, 0.1, dim, dtype=torch.float64)
    return x.T @ x / x.shape[0]


def test_threshold_schedule_matches_formula():
    assert threshold_schedule(0, 10, 0.95) == pytest.approx(0.95)
    assert threshold_schedule(5, 10, 0.95) == pytest.approx(0.95 + 0.05 * 5 / 10)
    assert threshold_schedule(9, 10, 0.98, 1.0) == pytest.approx(0.98 + 0.02 * 0.9)
    assert threshold_schedule(3, 4, 0.5, 0.5) == pytest.approx(0.5)
    with pytest.raises(SubspaceError, match="lamb"):
        threshold_schedule(0, 10, 1.5)
    with pytest.raises(SubspaceError, match="lame"):
        threshold_schedule(0, 10, 0.9, 0.0)
    with pytest.raises(SubspaceError, match="task"):
        threshold_schedule(10, 10, 0.9)


def test_empty_memory_projects_to_zero():
    mem = SubspaceMemory(8)
    assert mem.rank == 0
    assert_close(mem.projector(), torch.zeros(8, 8, dtype=torch.float64))


def test_first_update_keeps_smallest_k_reaching_threshold():
    dim = 16
    cov = full_cov(dim, 0)
    s = torch.linalg.svdvals(cov)
    ratio = torch.cumsum(s**2, 0) / (s**2).sum()
    for threshold in (0.5, 0.9, 0.99):
        mem = SubspaceMemory(dim, dual=False)
        mem.update(cov, threshold)
        expected = max(int((ratio < threshold).sum()), 1)
        assert mem.rank == expected
        # the stored space is the top-k singular subspace of C
        u = torch.linalg.svd(cov)[0][:, :expected]
        assert_close(mem.projector(), u @ u.T)


@pytest.mark.parametrize("dual", [True, False])
def test_projector_is_an_orthogonal_projector(dual):
    dim = 12
    mem = SubspaceMemory(dim, dual=dual)
    for seed, thr in [(0, 0.6), (1, 0.8), (2, 0.95)]:
        mem.update(full_cov(dim, seed), thr)
        p = mem.projector()
        assert_close(p @ p, p, atol=1e-10, rtol=0)
        assert_close(p, p.T)
        assert torch.linalg.matrix_rank(p).item() == mem.rank
        assert abs(torch.trace(p).item() - mem.rank) < 1e-8


def first_k(cov: torch.Tensor, threshold: float) -> int:
    """The reference rule: number of cumulative energy fractions below the threshold (>= 1)."""
    s = torch.linalg.svdvals(cov)
    return max(int((torch.cumsum(s**2, 0) / (s**2).sum() < threshold).sum()), 1)


def test_switch_to_complement_when_rank_exceeds_half():
    dim = 10
    mem = SubspaceMemory(dim)
    first = low_rank_cov(dim, 4, seed=0, decay=1.0)
    mem.update(first, 0.99)
    assert mem.mode == "memory" and mem.rank == first_k(first, 0.99) == 3 and mem.basis.shape == (dim, 3)
    before = mem.projector()
    mem.update(low_rank_cov(dim, 8, seed=1, decay=1.0), 0.999)
    assert mem.rank > dim / 2
    assert mem.mode == "complement"
    assert mem.basis.shape == (dim, dim - mem.rank)  # stores M⊥, the smaller side
    # the old space is still inside the new one
    after = mem.projector()
    assert_close(after @ before, before, atol=1e-9, rtol=0)
    # the complement basis is orthonormal and orthogonal to the stored space
    assert_close(mem.basis.T @ mem.basis, torch.eye(mem.basis.shape[1], dtype=torch.float64), atol=1e-10, rtol=0)
    assert_close(after @ mem.basis, torch.zeros_like(mem.basis), atol=1e-10, rtol=0)


def test_first_update_above_half_stores_the_complement():
    dim = 8
    cov = low_rank_cov(dim, 7, seed=3, decay=1.0)
    assert first_k(cov, 0.999) == 6
    mem = SubspaceMemory(dim)
    mem.update(cov, 0.999)
    assert mem.rank == 6 and mem.mode == "complement" and mem.basis.shape == (dim, 2)
    plain = SubspaceMemory(dim, dual=False)
    plain.update(cov, 0.999)
    assert plain.mode == "memory" and plain.basis.shape == (dim, 6)
    assert_close(mem.projector(), plain.projector(), atol=1e-9, rtol=0)


def test_grow_memory_energy_criterion_matches_reference_loop():
    """The M-mode update reproduces the reference loop step by step."""
    dim = 16
    mem = SubspaceMemory(dim, dual=False)
    mem.update(full_cov(dim, 0), 0.7)
    old_basis = mem.basis.clone()
    cov = full_cov(dim, 5)
    threshold = 0.9
    total = (torch.linalg.svdvals(cov) ** 2).sum()
    residual = cov - old_basis @ old_basis.T @ cov
    u, s, _ = torch.linalg.svd(residual)
    captured = (total - (s**2).sum()) / total
    k = 0
    for r in (s**2 / total):
        if captured < threshold:
            captured += r
            k += 1
        else:
            break
    added = mem.update(cov, threshold)
    assert added == k
    assert_close(mem.basis[:, : old_basis.shape[1]], old_basis)
    assert mem.energy_captured(cov) >= threshold - 1e-9


def test_complement_update_keeps_energy_criterion_and_nesting():
    dim = 8
    mem = SubspaceMemory(dim)
    mem.update(low_rank_cov(dim, 6, seed=0, decay=0.9), 0.999)
    assert mem.mode == "complement"
    before = mem.projector()
    cov = full_cov(dim, 7)
    threshold = 0.95
    mem.update(cov, threshold)
    after = mem.projector()
    assert_close(after @ before, before, atol=1e-9, rtol=0)
    assert mem.energy_captured(cov) >= threshold - 1e-6 or mem.rank == dim


def test_design_is_orthonormal_and_orthogonal_to_memory():
    dim, rank = 16, 4
    mem = SubspaceMemory(dim)
    mem.update(full_cov(dim, 0), 0.8)
    down = design_down_projection(full_cov(dim, 1), mem, rank)
    assert down.shape == (rank, dim)
    assert_close(down @ down.T, torch.eye(rank, dtype=torch.float64), atol=1e-10, rtol=0)
    assert_close(down @ mem.projector(), torch.zeros(rank, dim, dtype=torch.float64), atol=1e-10, rtol=0)


def test_design_without_memory_is_top_singular_subspace():
    dim, rank = 12, 3
    cov = full_cov(dim, 2)
    down = design_down_projection(cov, None, rank)
    u = torch.linalg.svd(cov)[0][:, :rank]
    assert_close(down.T @ down, u @ u.T, atol=1e-10, rtol=0)


def test_design_in_complement_mode_is_orthogonal():
    dim, rank = 8, 2
    mem = SubspaceMemory(dim)
    mem.update(low_rank_cov(dim, 6, seed=0, decay=1.0), 0.999)
    assert mem.mode == "complement"
    down = design_down_projection(full_cov(dim, 4), mem, rank)
    assert_close(down @ mem.projector(), torch.zeros(rank, dim, dtype=torch.float64), atol=1e-10, rtol=0)
    # the rows lie in the stored complement
    assert_close(down @ mem.basis @ mem.basis.T, down, atol=1e-10, rtol=0)


def test_design_completes_low_rank_inputs_outside_memory():
    dim, rank = 10, 4
    mem = SubspaceMemory(dim)
    mem.update(low_rank_cov(dim, 4, seed=0, decay=1.0), 0.99)
    cov = low_rank_cov(dim, 2, seed=9)  # only 2 directions of signal
    down = design_down_projection(cov, mem, rank)
    assert_close(down @ down.T, torch.eye(rank, dtype=torch.float64), atol=1e-10, rtol=0)
    assert_close(down @ mem.projector(), torch.zeros(rank, dim, dtype=torch.float64), atol=1e-10, rtol=0)


def test_rank_larger_than_free_dimensions_is_a_clear_error():
    dim = 8
    mem = SubspaceMemory(dim)
    mem.update(low_rank_cov(dim, 7, seed=0, decay=1.0), 0.999)
    assert mem.rank == 6
    with pytest.raises(SubspaceError, match="larger than the 2 input dimensions left outside"):
        design_down_projection(full_cov(dim, 1), mem, 3)


def test_bad_threshold_and_shape_are_errors():
    mem = SubspaceMemory(4)
    with pytest.raises(SubspaceError, match="threshold"):
        mem.update(torch.eye(4), 0.0)
    with pytest.raises(SubspaceError, match="threshold"):
        mem.update(torch.eye(4), 1.01)
    with pytest.raises(SubspaceError, match="shape"):
        mem.update(torch.eye(5), 0.9)
    with pytest.raises(SubspaceError, match="NaN"):
        mem.update(torch.full((4, 4), float("nan")), 0.9)


def test_memory_bank_round_trip():
    bank = {"a": SubspaceMemory(6), "b": SubspaceMemory(6, dual=False)}
    bank["a"].update(low_rank_cov(6, 4, seed=0, decay=1.0), 0.999)
    bank["b"].update(full_cov(6, 1), 0.5)
    restored = memory_bank_from_state(memory_bank_state(bank))
    for k in bank:
        assert restored[k].mode == bank[k].mode and restored[k].dual == bank[k].dual
        assert_close(restored[k].projector(), bank[k].projector(), rtol=0, atol=0)
