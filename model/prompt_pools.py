"""The prompt modules of L2P, DualPrompt and CODA-Prompt, as the official code computes them.

Source followed for every formula: ``liangyanshuo/InfLoRA`` ``models/zoo.py``
(classes ``L2P``, ``DualPrompt``, ``CodaPrompt``, identical to
``GT-RIPL/CODA-Prompt`` ``models/zoo.py``), driven by ``models/sinet_{l2p,dual,coda}.py``
and ``methods/sprompt_{l2p,dual,coda}.py``. All three use **prefix tuning** in
the InfLoRA repository (its ``L2P`` subclasses ``DualPrompt`` and returns
``[Ek, Ev]`` prefixes, i.e. CODA-Prompt's "L2P++"); :class:`L2PPool` also offers
the original L2P's prompt tuning (``style="prompt"``) as an option.

Trainability is structural: components that belong to one task are separate
parameters, so old ones are frozen by ``requires_grad=False`` and, in CODA-Prompt,
also ``.detach()``-ed in the forward as the official code does. Numerically this
equals the official single-tensor layout with Adam re-created per task and
weight decay 0 (the official settings), where untouched rows get exactly zero
gradient and so no update. See ``docs/prompt_methods.md`` for defaults and
departures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .prompts import PromptModule, PromptOutput, split_prefix, task_key

__all__ = ["L2PPool", "DualPromptPool", "CodaPromptPool", "CodaComponents", "gram_schmidt_extend", "ortho_penalty"]


def _uniform(shape: Sequence[int], generator: torch.Generator | None) -> nn.Parameter:
    """Official ``tensor_prompt``: ``nn.init.uniform_`` (U[0, 1)) on a float tensor."""
    return nn.Parameter(torch.rand(*shape, generator=generator))


def _cosine(query: Tensor, keys: Tensor) -> Tensor:
    """``(B, K)`` cosine similarities of ``query (B, D)`` with ``keys (K, D)`` (official ``cos_sim``)."""
    return F.normalize(query, dim=1) @ F.normalize(keys, dim=1).T


def _zero(device: torch.device) -> Tensor:
    return torch.zeros((), device=device)


# ----------------------------------------------------------------------- L2P
class L2PPool(PromptModule):
    """L2P: a pool of prompts with keys, the top-k by cosine match, the key-pull loss.

    Official ``zoo.L2P`` (``top_k = 5``; layers ``[0]`` when ``prompt_param[2] <= 0``
    — CODA-Prompt's configs use ``-1``, shallow — else ``[0..4]``), forward
    inherited from ``zoo.DualPrompt`` with ``task_id_bootstrap = False``. Each
    prompted block has its own keys and pool and selects independently.

    Surrogate loss per block, as indexed in the official code
    (``loss = (1.0 - cos_sim[:, k_idx]).sum()`` with ``k_idx`` ``(B, k)``):
    ``Σ_{b, b', j} (1 − cos(q_b, key_{idx[b', j]}))`` — every query is pulled to the
    keys selected by *any* sample of the batch. Summed over blocks, times ``pull_weight``
    (official: 1, the loss is added as ``prompt_loss.sum()``).

    Args:
        embed_dim: ``D``.
        pool_size: prompts per block (official config: 30).
        length: tokens per prompt (official: 20; halves are keys/values in prefix style).
        top_k: prompts chosen per sample (official: 5).
        layers: prompted blocks (official shallow: ``(0,)``).
        style: ``"prefix"`` (official InfLoRA/CODA-Prompt) or ``"prompt"`` (original L2P,
            tokens at the input; only with ``layers=(0,)``).
        pull_weight: factor on the surrogate loss.
        generator: RNG of the U[0, 1) init.
    """

    def __init__(
        self,
        embed_dim: int,
        pool_size: int = 30,
        length: int = 20,
        top_k: int = 5,
        layers: Sequence[int] = (0,),
        style: str = "prefix",
        pull_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(embed_dim, layers)
        if style not in ("prefix", "prompt"):
            raise ValueError(f"l2p style must be 'prefix' or 'prompt', got {style!r}")
        if style == "prompt" and self.layers != (0,):
            raise ValueError(f"l2p style 'prompt' inserts tokens at the input: layers must be [0], got {list(self.layers)}")
        if style == "prefix" and length % 2:
            raise ValueError(f"l2p prefix length must be even (half keys, half values), got {length}")
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"l2p top_k must be in [1, pool_size={pool_size}], got {top_k}")
        self.pool_size, self.length, self.top_k, self.style, self.pull_weight = pool_size, length, top_k, style, pull_weight
        n = len(self.layers)
        self.prompts = _uniform((n, pool_size, length, embed_dim), generator)  # official e_p_{l}
        self.keys = _uniform((n, pool_size, embed_dim), generator)  # official e_k_{l}

    def select(self, query: Tensor, slot: int) -> tuple[Tensor, Tensor]:
        """``(indices (B, k) in descending similarity, cos (B, pool))`` for the ``slot``-th prompted block."""
        cos = _cosine(query.detach(), self.keys[slot])
        return torch.topk(cos, self.top_k, dim=1).indices, cos

    def forward(self, query: Tensor, task: int, train: bool) -> PromptOutput:
        out = PromptOutput(loss=_zero(query.device))
        for slot, block in enumerate(self.layers):
            idx, cos = self.select(query, slot)
            chosen = self.prompts[slot][idx]  # (B, k, L, D)
            if self.style == "prompt":
                out.tokens = chosen.reshape(chosen.shape[0], -1, self.embed_dim)
            else:
                out.prefixes[block] = split_prefix(chosen)
            if train:
                out.loss = out.loss + (1.0 - cos[:, idx]).sum()  # (B, B, k): the official indexing
        out.loss = out.loss * self.pull_weight
        return out

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """The whole pool trains in every task (official: every ``prompt_pool`` parameter)."""
        return [self.prompts, self.keys]


# ---------------------------------------------------------------- DualPrompt
class DualPromptPool(PromptModule):
    """DualPrompt: shared G-prompts, per-task E-prompts with keys, prefix tuning.

    Official ``zoo.DualPrompt`` (``g_layers = [0, 1]``, ``e_layers = [2, 3, 4]``,
    ``top_k = 1``, ``task_id_bootstrap = True``):

    * training forward of task ``t``: every sample uses E-prompt ``t``; the key
      loss per E-layer is the official ``(1 − cos_sim[:, task_id]).sum()`` with
      ``task_id`` the ``(B,)`` tensor ``sinet_dual.py`` passes, i.e.
      ``B · Σ_b (1 − cos(q_b, key_t))``;
    * test forward: per E-layer, the E-prompt whose key has the largest cosine
      with the query, over the **whole** pool (as official: untrained entries too);
    * a layer that has both gets ``[E; G]`` prefixes (official ``cat((Ek, Gk))``).

    Args:
        embed_dim: ``D``.
        pool_size: E-prompts (official config: 10 = number of tasks).
        e_length, g_length: tokens per E-/G-prompt (official: 20 and 6).
        g_layers, e_layers: blocks of each (official: ``(0, 1)`` and ``(2, 3, 4)``).
        pull_weight: factor on the key loss (official: 1).
        generator: RNG of the U[0, 1) init.
    """

    def __init__(
        self,
        embed_dim: int,
        pool_size: int = 10,
        e_length: int = 20,
        g_length: int = 6,
        g_layers: Sequence[int] = (0, 1),
        e_layers: Sequence[int] = (2, 3, 4),
        pull_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        g_layers, e_layers = tuple(int(i) for i in g_layers), tuple(int(i) for i in e_layers)
        super().__init__(embed_dim, sorted(set(g_layers) | set(e_layers)))
        if len(set(g_layers)) != len(g_layers) or len(set(e_layers)) != len(e_layers):
            raise ValueError("dualprompt g_layers and e_layers must each be distinct block indices")
        self.g_layers, self.e_layers = g_layers, e_layers
        for name, length in (("e_length", e_length), ("g_length", g_length)):
            if length < 2 or length % 2:
                raise ValueError(f"dualprompt {name} must be an even number >= 2 (half keys, half values), got {length}")
        if not self.e_layers or pool_size < 1:
            raise ValueError("dualprompt needs at least one E-layer and pool_size >= 1")
        self.pool_size, self.e_length, self.g_length, self.pull_weight = pool_size, e_length, g_length, pull_weight
        self.g_prompts = _uniform((len(self.g_layers), g_length, embed_dim), generator) if self.g_layers else None
        n_e = len(self.e_layers)
        self.e_prompts = nn.ParameterList([_uniform((n_e, e_length, embed_dim), generator) for _ in range(pool_size)])
        self.e_keys = nn.ParameterList([_uniform((n_e, embed_dim), generator) for _ in range(pool_size)])

    def _check_task(self, task: int) -> None:
        if not 0 <= task < self.pool_size:
            raise ValueError(f"dualprompt has {self.pool_size} E-prompts (pool_size), task {task} has none")

    def select(self, query: Tensor, slot: int) -> tuple[Tensor, Tensor]:
        """Test-time ``(indices (B,), cos (B, pool))`` of the ``slot``-th E-layer: argmax key cosine."""
        keys = torch.stack([k[slot] for k in self.e_keys])
        cos = _cosine(query.detach(), keys)
        return cos.argmax(dim=1), cos

    def forward(self, query: Tensor, task: int, train: bool) -> PromptOutput:
        batch = query.shape[0]
        out = PromptOutput(loss=_zero(query.device))
        e_prefix: dict[int, tuple[Tensor, Tensor]] = {}
        if train:
            self._check_task(task)
        for slot, block in enumerate(self.e_layers):
            idx, cos = self.select(query, slot)
            if train:
                chosen = self.e_prompts[task][slot].expand(batch, -1, -1)
                out.loss = out.loss + batch * (1.0 - cos[:, task]).sum()
            else:
                chosen = torch.stack([p[slot] for p in self.e_prompts])[idx]
            e_prefix[block] = split_prefix(chosen)
        for slot, block in enumerate(self.g_layers):
            gk, gv = split_prefix(self.g_prompts[slot].expand(batch, -1, -1))  # type: ignore[index]
            if block in e_prefix:
                ek, ev = e_prefix[block]
                e_prefix[block] = (torch.cat([ek, gk], dim=1), torch.cat([ev, gv], dim=1))
            else:
                e_prefix[block] = (gk, gv)
        out.prefixes = e_prefix
        out.loss = out.loss * self.pull_weight
        return out

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """G-prompts (shared, train in every task) + the task's E-prompt and key."""
        self._check_task(task)
        shared = [self.g_prompts] if self.g_prompts is not None else []
        return shared + [self.e_prompts[task], self.e_keys[task]]


# ---------------------------------------------------------------- CODA-Prompt
def ortho_penalty(t: Tensor) -> Tensor:
    """Official ``ortho_penalty``: ``mean((t tᵀ − I)²)`` over the rows of ``t (n, m)``."""
    eye = torch.eye(t.shape[0], device=t.device, dtype=t.dtype)
    return ((t @ t.T - eye) ** 2).mean()


def gram_schmidt_extend(old: Tensor, count: int, generator: torch.Generator | None = None) -> Tensor:
    """``count`` new unit rows made orthogonal to ``old (s, n)`` and each other.

    Official ``CodaPrompt.gram_schmidt``: for each new index ``k`` draw
    ``v_k ~ N(0, I)``, subtract ``Σ_{j<k} (v_k·u_j)/(u_j·u_j) u_j`` over every
    earlier row ``u_j`` — the old (trained, not re-orthogonalised) rows and the
    new unnormalised ones — then normalise the new rows. (The official code loops
    forever when some ``u_j·u_j < 1e-8``; this raises instead.)

    Returns:
        ``(count, n)`` float32 on ``old``'s device.
    """
    rows = [r for r in old.detach().float()]
    n = old.shape[1]
    if old.shape[0] + count > n:
        raise ValueError(f"cannot make {old.shape[0] + count} orthogonal vectors of size {n}")
    new: list[Tensor] = []
    for _ in range(count):
        v = torch.randn(n, generator=generator).to(old.device)
        if rows:
            u = torch.stack(rows)
            denom = (u * u).sum(dim=1)
            if bool((denom < 1e-8).any()):
                raise FloatingPointError("gram-schmidt met a (near) zero component")
            v = v - ((u @ v) / denom) @ u
        rows.append(v)
        new.append(v)
    out = torch.stack(new)
    return out / out.norm(dim=1, keepdim=True)


class CodaComponents(nn.Module):
    """One task's CODA-Prompt components in every prompted block.

    Attributes:
        p: ``(n_layers, m, L, D)`` prompt components (official ``e_p_{l}[s:f]``).
        k: ``(n_layers, m, D)`` keys (``e_k_{l}[s:f]``).
        a: ``(n_layers, m, D)`` attention vectors (``e_a_{l}[s:f]``).
    """

    def __init__(self, p: Tensor, k: Tensor, a: Tensor) -> None:
        super().__init__()
        self.p, self.k, self.a = nn.Parameter(p), nn.Parameter(k), nn.Parameter(a)


class CodaPromptPool(PromptModule):
    """CODA-Prompt: attention-weighted sums of prompt components, prefix tuning.

    Official ``zoo.CodaPrompt`` (``e_layers = [0..4]``; ``pool_size / n_tasks``
    components per task). For a query ``q`` and the components ``1..f`` of tasks
    ``0..t`` in one block::

        α_{b,k} = cos(q_b ⊙ A_k, K_k)            # attention vector multiplies the query
        P_b     = Σ_k α_{b,k} p_k                 # (L, D); keys = first L/2 rows, values = rest

    Components of tasks ``< t`` are ``.detach()``-ed (official ``K[:s].detach().clone()``)
    and frozen; task ``t``'s are created in :meth:`begin_task` by Gram-Schmidt
    against the existing ones (official ``process_task_count``). Training loss:
    ``ortho_mu · Σ_blocks [pen(K) + pen(A) + pen(p.view(f, −1))]``.

    Args:
        embed_dim: ``D``.
        n_tasks: number of tasks (splits the pool; official ``total_sessions``).
        pool_size: components in all (official config: 100).
        length: tokens per component (official: 8).
        ortho_mu: weight of the orthogonality penalty (official config: 0.0, "with
            updated code, now can be 0"; InfLoRA's ``sprompt_coda.py`` never adds it).
        layers: prompted blocks (official: ``(0, 1, 2, 3, 4)``).
    """

    def __init__(
        self,
        embed_dim: int,
        n_tasks: int,
        pool_size: int = 100,
        length: int = 8,
        ortho_mu: float = 0.0,
        layers: Sequence[int] = (0, 1, 2, 3, 4),
    ) -> None:
        super().__init__(embed_dim, layers)
        if n_tasks < 1 or pool_size // n_tasks < 1:
            raise ValueError(f"coda_prompt pool_size ({pool_size}) must give at least one component to each of {n_tasks} tasks")
        if length < 2 or length % 2:
            raise ValueError(f"coda_prompt length must be an even number >= 2 (half keys, half values), got {length}")
        if pool_size > embed_dim:
            raise ValueError(f"coda_prompt pool_size ({pool_size}) cannot exceed the key size {embed_dim} (orthogonal keys)")
        if ortho_mu < 0:
            raise ValueError(f"coda_prompt ortho_mu must be >= 0, got {ortho_mu}")
        self.n_tasks, self.pool_size, self.length, self.ortho_mu = n_tasks, pool_size, length, ortho_mu
        self.per_task = pool_size // n_tasks  # official pt = int(e_pool_size / n_tasks)
        self.components = nn.ModuleDict()

    def configure_tasks(self, n_tasks: int) -> None:
        """Split the pool over ``n_tasks`` tasks (known to a method only once it sees the run).

        Raises:
            ValueError: fewer than one component per task, or components already
                created with another split.
        """
        if n_tasks < 1 or self.pool_size // n_tasks < 1:
            raise ValueError(f"coda_prompt pool_size ({self.pool_size}) must give at least one component to each of {n_tasks} tasks")
        per_task = self.pool_size // n_tasks
        if len(self.components) and per_task != self.per_task:
            raise ValueError(f"coda_prompt components exist with {self.per_task} per task; cannot re-split for {n_tasks} tasks")
        self.n_tasks, self.per_task = n_tasks, per_task

    def _chunks(self, upto: int) -> list[CodaComponents]:
        missing = [t for t in range(upto + 1) if task_key(t) not in self.components]
        if missing:
            raise RuntimeError(f"coda_prompt components of tasks {missing} do not exist: call begin_task in order")
        return [self.components[task_key(t)] for t in range(upto + 1)]  # type: ignore[misc]

    def begin_task(self, task: int, generator: torch.Generator | None = None) -> None:
        """Add task ``task``'s components (Gram-Schmidt vs. the existing ones) unless present."""
        if not 0 <= task < self.n_tasks:
            raise ValueError(f"coda_prompt was built for {self.n_tasks} tasks, got task {task}")
        if task_key(task) in self.components:
            return
        old = self._chunks(task - 1) if task else []
        m, n_layers, D, L = self.per_task, len(self.layers), self.embed_dim, self.length
        new: dict[str, list[Tensor]] = {"p": [], "k": [], "a": []}
        for slot in range(n_layers):
            for name in ("k", "a", "p"):
                prev = [getattr(c, name)[slot].reshape(self.per_task, -1) for c in old]
                width = L * D if name == "p" else D
                base = torch.cat(prev) if prev else torch.empty(0, width, device=self.device)
                new[name].append(gram_schmidt_extend(base, m, generator))
        comp = CodaComponents(
            torch.stack(new["p"]).reshape(n_layers, m, L, D), torch.stack(new["k"]), torch.stack(new["a"])
        ).to(self.device)
        self.components[task_key(task)] = comp

    def weights(self, query: Tensor, keys: Tensor, attn: Tensor) -> Tensor:
        """``(B, f)`` component weights ``cos(q ⊙ A_k, K_k)`` (official ``aq_k``)."""
        a_query = torch.einsum("bd,kd->bkd", query, attn)
        return torch.einsum("bkd,kd->bk", F.normalize(a_query, dim=2), F.normalize(keys, dim=1))

    def _layer_tensors(self, slot: int, task: int) -> tuple[Tensor, Tensor, Tensor]:
        chunks = self._chunks(task)
        parts = [(c.k[slot], c.a[slot], c.p[slot]) if t == task else (c.k[slot].detach(), c.a[slot].detach(), c.p[slot].detach())
                 for t, c in enumerate(chunks)]
        return tuple(torch.cat(x) for x in zip(*parts))  # type: ignore[return-value]

    def forward(self, query: Tensor, task: int, train: bool) -> PromptOutput:
        out = PromptOutput(loss=_zero(query.device))
        for slot, block in enumerate(self.layers):
            keys, attn, prompts = self._layer_tensors(slot, task)
            alpha = self.weights(query, keys, attn)
            out.prefixes[block] = split_prefix(torch.einsum("bk,kld->bld", alpha, prompts))
            if train and self.ortho_mu > 0:
                pen = ortho_penalty(keys) + ortho_penalty(attn) + ortho_penalty(prompts.reshape(prompts.shape[0], -1))
                out.loss = out.loss + self.ortho_mu * pen
        return out

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """Task ``task``'s components only."""
        return list(self._chunks(task)[task].parameters())

    def load_state(self, state: Mapping[str, Tensor]) -> None:
        """Create the components named in ``state`` (``components.task_003.k``…), then copy."""
        tasks: dict[str, dict[str, Tensor]] = {}
        for key, value in state.items():
            kind, name, field_ = key.split(".")
            if kind != "components" or field_ not in ("p", "k", "a"):
                raise KeyError(f"unexpected coda_prompt state key {key!r}")
            tasks.setdefault(name, {})[field_] = value
        for name, tensors in sorted(tasks.items()):
            if name not in self.components:
                self.components[name] = CodaComponents(*(torch.zeros_like(tensors[f]) for f in ("p", "k", "a"))).to(self.device)
            self.components[name].load_state_dict(tensors)
