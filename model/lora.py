"""LoRA branches on the key and value rows of timm's fused ``qkv`` projection.

Naming (paper ↔ this module ↔ official code ``liangyanshuo/InfLoRA``):

* ``down``  — paper ``B_t`` (``r × d``), official ``lora_A_k``/``lora_A_v``: *designed*
  before the task from the input covariance and then frozen. One ``down`` is
  shared by k and v, as in the paper.
* ``up_k``, ``up_v`` — paper ``A_t`` (``d × r``), official ``lora_B_k``/``lora_B_v``:
  zero-initialised and trained on task t only.

A branch adds ``x ↦ up (down x)`` to the k and v rows of ``qkv(x)`` (timm stores
the fused projection with rows ordered q | k | v). The wrapper replaces the
``qkv`` attribute of a timm ``Attention`` module; timm's attention code is used
unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["REFERENCE_DOWN_SCALE", "LoRABranch", "BranchChange", "InfLoRAQKV", "branch_name"]

# The official code stores the designed down-projection divided by √3
# (``U[:, :r].T / math.sqrt(3)``); the published learning rates were tuned with it.
REFERENCE_DOWN_SCALE = 1.0 / math.sqrt(3.0)


def branch_name(task: int) -> str:
    """Key of task ``task``'s branch in :attr:`InfLoRAQKV.branches` (``"task_003"``)."""
    return f"task_{task:03d}"


class LoRABranch(nn.Module):
    """One low-rank branch: a shared ``down`` (``r × d``) and per-target ``up`` (``d_out × r``).

    Args:
        down: ``(r, d)`` down-projection rows; stored as given (scale applied by the caller).
        out_features: output size of each of the k and v targets.
        train_down: also train ``down`` (plain LoRA); InfLoRA keeps it frozen.
    """

    def __init__(self, down: Tensor, out_features: int, train_down: bool = False) -> None:
        super().__init__()
        if down.dim() != 2:
            raise ValueError(f"down must be a (rank, in_features) matrix, got shape {tuple(down.shape)}")
        rank = down.shape[0]
        self.train_down = train_down
        self.down = nn.Parameter(down.detach().clone().float(), requires_grad=False)
        self.up_k = nn.Parameter(torch.zeros(out_features, rank, device=down.device))
        self.up_v = nn.Parameter(torch.zeros(out_features, rank, device=down.device))
        self.set_trainable(False)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def is_trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def set_trainable(self, trainable: bool) -> None:
        """Train ``up`` (and ``down`` when ``train_down``); freeze everything otherwise."""
        self.up_k.requires_grad_(trainable)
        self.up_v.requires_grad_(trainable)
        self.down.requires_grad_(trainable and self.train_down)

    def delta(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The branch's additions to k and v for input ``x`` (``(..., d)``)."""
        hidden = F.linear(x, self.down)
        return F.linear(hidden, self.up_k), F.linear(hidden, self.up_v)


class InfLoRAQKV(nn.Module):
    """Wraps a fused ``qkv`` :class:`~torch.nn.Linear` and adds LoRA branches to k and v.

    Besides the branches it can, on request, accumulate the covariance of its
    input (``collect_covariance``) and the squared norm of one branch's output
    (``probe``): both are what InfLoRA measures at the attention input.

    Args:
        base_layer: timm's ``Attention.qkv`` (``out_features = 3 × attn_dim``).
    """

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear) or base_layer.out_features % 3:
            raise TypeError("InfLoRAQKV wraps a fused qkv nn.Linear whose out_features is 3 × attn_dim")
        self.base_layer = base_layer.requires_grad_(False)  # pretrained weights never train
        self.in_features = base_layer.in_features
        self.attn_dim = base_layer.out_features // 3
        self.branches = nn.ModuleDict()
        self.collect_covariance = False
        self.register_buffer("cov_sum", torch.zeros(self.in_features, self.in_features, dtype=torch.float64), persistent=False)
        self.register_buffer("cov_count", torch.zeros((), dtype=torch.float64), persistent=False)
        # Held in a list so that it is not registered as a submodule: a probe is a
        # temporary branch that is measured, never applied nor saved.
        self._probe: list[nn.Module] = []
        self._frozen_cache: tuple[tuple, Tensor] | None = None
        self.register_buffer("probe_sq_norm", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("probe_count", torch.zeros((), dtype=torch.float64), persistent=False)

    # --------------------------------------------------------------- branches
    def add_branch(self, name: str, down: Tensor, train_down: bool = False) -> LoRABranch:
        """Add a branch ``name`` with the given ``(r, d)`` down-projection (already scaled)."""
        if name in self.branches:
            raise KeyError(f"branch {name!r} already exists")
        if down.shape[-1] != self.in_features:
            raise ValueError(f"down must have {self.in_features} columns, got shape {tuple(down.shape)}")
        weight = self.base_layer.weight
        branch = LoRABranch(down.to(device=weight.device), self.attn_dim, train_down=train_down)
        self.branches[name] = branch.to(device=weight.device)
        return branch

    def iter_branches(self) -> Iterator[tuple[str, LoRABranch]]:
        for name, branch in self.branches.items():
            yield name, branch  # type: ignore[misc]

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        if self.collect_covariance:
            self._accumulate_covariance(x)
        if self._probe:
            self._accumulate_probe(x)
        branches: list[LoRABranch] = list(self.branches.values())  # type: ignore[arg-type]
        frozen = [b for b in branches if not b.is_trainable]
        live = [b for b in branches if b.is_trainable]
        if frozen and not self.base_layer.weight.requires_grad:
            # Frozen branches cost one dense matmul, however many tasks came before.
            out = F.linear(x, self._frozen_weight(frozen), self.base_layer.bias)
        else:
            out = self.base_layer(x)
            live = branches
        if not live:
            return out
        delta_k, delta_v = self._branch_sum(live, x)
        q, k, v = out.split(self.attn_dim, dim=-1)
        return torch.cat([q, k + delta_k, v + delta_v], dim=-1)

    @torch.compiler.disable
    @torch.no_grad()
    def _frozen_weight(self, frozen: list[LoRABranch]) -> Tensor:
        """``W + [0; Σ up_k·down; Σ up_v·down]`` over the frozen branches, cached.

        A separate cached tensor rather than a merge into ``base_layer.weight``:
        the base weight is never modified, so nothing has to be unmerged. The
        cache is rebuilt whenever a source tensor changes (in-place version,
        storage, dtype or device), e.g. after ``load_state_dict``.

        Kept out of ``torch.compile`` graphs: traced, the cache key (tensor ids,
        versions, data pointers) becomes per-layer guards that recompile every
        wrapped layer and, past dynamo's cache limit, fall back to slow paths
        (measured on the CPU smoke of ``benchmarks/gpu_check.py``: 6 images/s
        compiled against 453 with this decorator).
        """
        sources = [self.base_layer.weight] + [t for b in frozen for t in (b.down, b.up_k, b.up_v)]
        key = tuple((id(t), t._version, t.data_ptr(), t.dtype, t.device) for t in sources)
        if self._frozen_cache is not None and self._frozen_cache[0] == key:
            return self._frozen_cache[1]
        down = torch.cat([b.down for b in frozen], dim=0)
        weight = self.base_layer.weight.detach().clone()
        weight[self.attn_dim : 2 * self.attn_dim] += torch.cat([b.up_k for b in frozen], dim=1) @ down
        weight[2 * self.attn_dim :] += torch.cat([b.up_v for b in frozen], dim=1) @ down
        if not torch.isfinite(weight).all():
            raise FloatingPointError("a frozen LoRA branch holds NaN or Inf values")
        self._frozen_cache = (key, weight)
        return weight

    def _branch_sum(self, branches: list[LoRABranch], x: Tensor) -> tuple[Tensor, Tensor]:
        if len(branches) == 1:
            return branches[0].delta(x)
        # One matmul through all branches: concat downs (R × d) and ups (d × R).
        down = torch.cat([b.down for b in branches], dim=0)
        up_k = torch.cat([b.up_k for b in branches], dim=1)
        up_v = torch.cat([b.up_v for b in branches], dim=1)
        hidden = F.linear(x, down)
        return F.linear(hidden, up_k), F.linear(hidden, up_v)

    # ------------------------------------------------------------ measurement
    @torch.no_grad()
    def _accumulate_covariance(self, x: Tensor) -> None:
        tokens = x.detach().reshape(-1, self.in_features)
        # Per-batch product in the compute dtype, running sum in float64.
        self.cov_sum += (tokens.T.float() @ tokens.float()).to(torch.float64)
        self.cov_count += tokens.shape[0]

    def reset_covariance(self) -> None:
        self.cov_sum.zero_()
        self.cov_count.zero_()

    def covariance(self) -> Tensor:
        """Mean of ``x xᵀ`` over every token seen since the last reset, ``(d, d)`` float64."""
        if float(self.cov_count) == 0:
            raise RuntimeError("no input was seen while collecting the covariance (is the task empty?)")
        return (self.cov_sum / self.cov_count).cpu()

    @torch.no_grad()
    def _accumulate_probe(self, x: Tensor) -> None:
        delta_k, delta_v = self._probe[0].delta(x.detach())
        self.probe_sq_norm += (delta_k.float().pow(2).sum() + delta_v.float().pow(2).sum()).double()
        self.probe_count += x.reshape(-1, self.in_features).shape[0]

    def set_probe(self, probe: nn.Module | None) -> None:
        """Measure ``probe.delta``'s output norm on every input until it is set to ``None``.

        ``probe`` is any module with ``delta(x) -> (dk, dv)``: a branch, or the
        change of a branch over a session (:class:`BranchChange`).
        """
        self._probe[:] = [] if probe is None else [probe.to(self.base_layer.weight.device)]
        self.reset_probe()

    def reset_probe(self) -> None:
        self.probe_sq_norm.zero_()
        self.probe_count.zero_()


class BranchChange(nn.Module):
    """The change ``after − before`` of a branch's output, for interference probes."""

    def __init__(self, after: LoRABranch, before: LoRABranch | None) -> None:
        super().__init__()
        self.after = after
        self.before = before

    def delta(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dk, dv = self.after.delta(x)
        if self.before is None:
            return dk, dv
        bk, bv = self.before.delta(x)
        return dk - bk, dv - bv


def wrapped_layers(modules: Iterable[nn.Module]) -> list[InfLoRAQKV]:
    return [m for m in modules if isinstance(m, InfLoRAQKV)]
