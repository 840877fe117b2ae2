"""LoRA branches on chosen rows (q, k, v) of timm's fused ``qkv`` projection.

Naming (paper ↔ this module ↔ official code ``liangyanshuo/InfLoRA``):

* ``down``  — paper ``B_t`` (``r × d``), official ``lora_A_k``/``lora_A_v``: *designed*
  before the task from the input covariance and then frozen. One ``down`` is
  shared by every target, as in the paper.
* ``up_k``, ``up_v`` (``up_q``) — paper ``A_t`` (``d × r``), official
  ``lora_B_k``/``lora_B_v``: zero-initialised and trained on task t only.

A branch adds ``x ↦ up_t (down x)`` to the rows of target ``t`` of ``qkv(x)``
(timm stores the fused projection with rows ordered q | k | v). Which targets a
branch adapts is the method's choice: InfLoRA adapts k and v, SD-LoRA q and v.
The wrapper replaces the ``qkv`` attribute of a timm ``Attention`` module;
timm's attention code is used unchanged.

Every branch type exposes its contribution as low-rank *factors*
``{target: (up, down)}`` (``up`` may carry a differentiable scale, as SD-LoRA's
magnitudes do). Frozen branches are folded into one cached weight; trainable
ones run as one concatenated low-rank product per target.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lora_constants import REFERENCE_DOWN_SCALE, TARGETS, check_targets

__all__ = [
    "REFERENCE_DOWN_SCALE",
    "TARGETS",
    "Branch",
    "LoRABranch",
    "FactorBranch",
    "BranchChange",
    "LoRAQKV",
    "InfLoRAQKV",
    "branch_name",
    "check_targets",
]


def branch_name(task: int) -> str:
    """Key of task ``task``'s branch in :attr:`LoRAQKV.branches` (``"task_003"``)."""
    return f"task_{task:03d}"


class Branch(Protocol):
    """What :class:`LoRAQKV` needs of a branch."""

    targets: tuple[str, ...]

    @property
    def is_trainable(self) -> bool: ...

    def factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Per target, ``(up (d_out × r), down (r × d_in))`` with the branch's scale in ``up``."""

    def cache_sources(self) -> list[Tensor]:
        """Every tensor the factors are computed from (keys the frozen-weight cache)."""

    def delta(self, x: Tensor) -> dict[str, Tensor]:
        """The branch's addition to each target's rows for input ``x``."""


class LoRABranch(nn.Module):
    """One low-rank branch: a shared ``down`` (``r × d``) and one ``up`` (``d_out × r``) per target.

    Args:
        down: ``(r, d)`` down-projection rows; stored as given (scale applied by the caller).
        out_features: output size of each target's rows.
        targets: which of q, k, v the branch adds to (InfLoRA: k and v).
        train_down: also train ``down`` (plain LoRA); InfLoRA keeps it frozen.
    """

    def __init__(self, down: Tensor, out_features: int, targets: Sequence[str] = ("k", "v"), train_down: bool = False) -> None:
        super().__init__()
        if down.dim() != 2:
            raise ValueError(f"down must be a (rank, in_features) matrix, got shape {tuple(down.shape)}")
        rank = down.shape[0]
        self.targets = check_targets(targets)
        self.train_down = train_down
        self.down = nn.Parameter(down.detach().clone().float(), requires_grad=False)
        for t in self.targets:
            self.register_parameter(f"up_{t}", nn.Parameter(torch.zeros(out_features, rank, device=down.device)))
        self.set_trainable(False)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def up(self, target: str) -> nn.Parameter:
        return getattr(self, f"up_{target}")

    @property
    def is_trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def set_trainable(self, trainable: bool) -> None:
        """Train ``up`` (and ``down`` when ``train_down``); freeze everything otherwise."""
        for t in self.targets:
            self.up(t).requires_grad_(trainable)
        self.down.requires_grad_(trainable and self.train_down)

    def factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        return {t: (self.up(t), self.down) for t in self.targets}

    def cache_sources(self) -> list[Tensor]:
        return [self.down] + [self.up(t) for t in self.targets]

    def delta(self, x: Tensor) -> dict[str, Tensor]:
        hidden = F.linear(x, self.down)
        return {t: F.linear(hidden, self.up(t)) for t in self.targets}


class FactorBranch(nn.Module):
    """A LoRA branch with its own ``down_<t>`` (r × d) and ``up_<t>`` (d × r) per target,
    zero until set; both train while the branch is trainable (LoRA⁻'s ``lora_A_<t>``/``lora_B_<t>``,
    CL-LoRA's ``lora_B``/``lora_A``)."""

    def __init__(self, in_features: int, out_features: int, rank: int, targets: Sequence[str] = ("k", "v")) -> None:
        super().__init__()
        self.targets = check_targets(targets)
        for t in self.targets:
            self.register_parameter(f"down_{t}", nn.Parameter(torch.zeros(rank, in_features)))
            self.register_parameter(f"up_{t}", nn.Parameter(torch.zeros(out_features, rank)))
        self.set_trainable(False)

    def down(self, t: str) -> nn.Parameter:
        return getattr(self, f"down_{t}")

    def up(self, t: str) -> nn.Parameter:
        return getattr(self, f"up_{t}")

    @property
    def is_trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def set_trainable(self, trainable: bool) -> None:
        self.requires_grad_(trainable)

    def factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        return {t: (self.up(t), self.down(t)) for t in self.targets}

    def cache_sources(self) -> list[Tensor]:
        return list(self.parameters())

    def delta(self, x: Tensor) -> dict[str, Tensor]:
        return {t: F.linear(F.linear(x, down), up) for t, (up, down) in self.factors().items()}


class LoRAQKV(nn.Module):
    """Wraps a fused ``qkv`` :class:`~torch.nn.Linear` and adds LoRA branches to chosen rows.

    Besides the branches it can, on request, accumulate the covariance of its
    input (``collect_covariance``) and the squared norm of one branch's output
    (``probe``): both are what InfLoRA measures at the attention input.

    Args:
        base_layer: timm's ``Attention.qkv`` (``out_features = 3 × attn_dim``).
    """

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear) or base_layer.out_features % 3:
            raise TypeError("LoRAQKV wraps a fused qkv nn.Linear whose out_features is 3 × attn_dim")
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

    def rows(self, target: str) -> slice:
        """Rows of ``target`` in the fused output."""
        i = TARGETS.index(target)
        return slice(i * self.attn_dim, (i + 1) * self.attn_dim)

    # --------------------------------------------------------------- branches
    def add_branch(self, name: str, down: Tensor, train_down: bool = False, targets: Sequence[str] = ("k", "v")) -> LoRABranch:
        """Add a :class:`LoRABranch` ``name`` with the given ``(r, d)`` down-projection (already scaled)."""
        if down.shape[-1] != self.in_features:
            raise ValueError(f"down must have {self.in_features} columns, got shape {tuple(down.shape)}")
        weight = self.base_layer.weight
        branch = LoRABranch(down.to(device=weight.device), self.attn_dim, targets=targets, train_down=train_down)
        return self.add_module_branch(name, branch)

    def add_module_branch(self, name: str, branch: nn.Module) -> nn.Module:
        """Add any module following the :class:`Branch` protocol under ``name``."""
        if name in self.branches:
            raise KeyError(f"branch {name!r} already exists")
        self.branches[name] = branch.to(device=self.base_layer.weight.device)
        return branch

    def iter_branches(self) -> Iterator[tuple[str, nn.Module]]:
        yield from self.branches.items()

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        if self.collect_covariance:
            self._accumulate_covariance(x)
        if self._probe:
            self._accumulate_probe(x)
        branches: list[Branch] = list(self.branches.values())  # type: ignore[arg-type]
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
        deltas = self._branch_sum(live, x)
        parts = list(out.split(self.attn_dim, dim=-1))
        for i, target in enumerate(TARGETS):
            if target in deltas:
                parts[i] = parts[i] + deltas[target]
        return torch.cat(parts, dim=-1)

    @torch.compiler.disable
    @torch.no_grad()
    def _frozen_weight(self, frozen: list[Branch]) -> Tensor:
        """``W`` plus every frozen branch's ``up·down`` on its target rows, cached.

        A separate cached tensor rather than a merge into ``base_layer.weight``:
        the base weight is never modified, so nothing has to be unmerged. The
        cache is rebuilt whenever a source tensor changes (in-place version,
        storage, dtype or device), e.g. after ``load_state_dict`` or when a
        magnitude that scales a frozen direction moves.


        Kept out of ``torch.compile`` graphs: traced, the cache key (tensor ids,
        versions, data pointers) becomes per-layer guards that recompile every
        wrapped layer and, past dynamo's cache limit, fall back to slow paths
        (measured on the CPU smoke of ``benchmarks/gpu_check.py``: 6 images/s
        compiled against 453 with this decorator).
        """
        sources = [self.base_layer.weight] + [t for b in frozen for t in b.cache_sources()]
        key = tuple((id(t), t._version, t.data_ptr(), t.dtype, t.device) for t in sources)
        if self._frozen_cache is not None and self._frozen_cache[0] == key:
            return self._frozen_cache[1]
        weight = self.base_layer.weight.detach().clone()
        for target, (up, down, _) in self._concat_factors(frozen).items():
            weight[self.rows(target)] += up @ down
        if not torch.isfinite(weight).all():
            raise FloatingPointError("a frozen LoRA branch holds NaN or Inf values")
        self._frozen_cache = (key, weight)
        return weight

    @staticmethod
    def _concat_factors(branches: list[Branch]) -> dict[str, tuple[Tensor, Tensor, tuple[int, ...]]]:
        """Per target, the branches' ups side by side (``d × R``), downs stacked (``R × d``),
        and the ids of those downs (targets with the same ids share one stacked down)."""
        per_target: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
        for branch in branches:
            for target, (up, down) in branch.factors().items():
                ups, downs = per_target.setdefault(target, ([], []))
                ups.append(up)
                downs.append(down)
        return {
            t: (torch.cat(ups, dim=1), torch.cat(downs, dim=0), tuple(id(d) for d in downs))
            for t, (ups, downs) in sorted(per_target.items(), key=lambda kv: TARGETS.index(kv[0]))
        }

    def _branch_sum(self, branches: list[Branch], x: Tensor) -> dict[str, Tensor]:
        if len(branches) == 1:
            return branches[0].delta(x)
        # One low-rank product per target through all branches; targets that share
        # the same stacked down-projection share its hidden activations.
        out: dict[str, Tensor] = {}
        hidden: dict[tuple[int, ...], Tensor] = {}
        for target, (up, down, key) in self._concat_factors(branches).items():
            if key not in hidden:
                hidden[key] = F.linear(x, down)
            out[target] = F.linear(hidden[key], up)
        return out

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
        deltas = self._probe[0].delta(x.detach())
        self.probe_sq_norm += sum(d.float().pow(2).sum() for d in deltas.values()).double()
        self.probe_count += x.reshape(-1, self.in_features).shape[0]

    def set_probe(self, probe: nn.Module | None) -> None:
        """Measure ``probe.delta``'s output norm on every input until it is set to ``None``.

        ``probe`` is any module with ``delta(x) -> {target: addition}``: a branch,
        or the change of a branch over a session (:class:`BranchChange`).
        """
        self._probe[:] = [] if probe is None else [probe.to(self.base_layer.weight.device)]
        self.reset_probe()

    def reset_probe(self) -> None:
        self.probe_sq_norm.zero_()
        self.probe_count.zero_()


InfLoRAQKV = LoRAQKV
"""The wrapper under its original name (InfLoRA adapts its k and v rows)."""


class BranchChange(nn.Module):
    """The change ``after − before`` of a branch's output, for interference probes."""

    def __init__(self, after: nn.Module, before: nn.Module | None) -> None:
        super().__init__()
        self.after = after
        self.before = before

    def delta(self, x: Tensor) -> dict[str, Tensor]:
        after = self.after.delta(x)
        if self.before is None:
            return after
        before = self.before.delta(x)
        return {t: d - before[t] for t, d in after.items()}


def wrapped_layers(modules: Iterable[nn.Module]) -> list[LoRAQKV]:
    return [m for m in modules if isinstance(m, LoRAQKV)]
