"""The prompt path in a timm ViT: prefix attention, input prompt tokens and a query pass.

Prompt-based continual methods (L2P, DualPrompt, CODA-Prompt; official code
``liangyanshuo/InfLoRA`` ``models/zoo.py``, taken from ``GT-RIPL/CODA-Prompt``)
condition a *frozen* ViT on learned vectors chosen from a frozen *query*:

1. the **query pass** runs the unprompted backbone and reads its final [CLS]
   feature ``q`` (official ``SiNet.extract_vector`` / ``ViTZoo.forward``, under
   ``torch.no_grad``);
2. a :class:`PromptModule` turns ``q`` into per-block *prefixes* (keys and values
   concatenated in front of the block's own, ``models/vit.py`` ``Attention.forward``:
   ``k = cat(pk, k)``) and/or *prompt tokens* inserted after the position
   embedding (the original L2P's prompt tuning), plus a surrogate loss;
3. the **prompted pass** runs the backbone again with those prompts.

Nothing here forks timm's ``VisionTransformer``: :class:`PrefixAttention`
replaces ``blocks[i].attn`` (keeping the same child modules under the same
names, so backbone state-dict keys do not change) and :class:`PromptedViT`
drives the backbone's own ``patch_embed``/``_pos_embed``/``blocks``/``norm``/
``forward_head``.

Train or test behaviour of a forward: every official prompt module takes a
``train`` flag (DualPrompt uses the task's own E-prompt at train time and key
matching at test time). The official loops keep the network in ``eval()`` while
training, so the flag cannot be ``nn.Module.training``; here a forward is a
*training forward* when autograd is on (``torch.is_grad_enabled()``), which is
true in the training loop and false under ``predict``'s ``torch.no_grad``. Pass
``train=`` explicitly to override.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import Tensor, nn

from .net import ContinualViT

__all__ = ["PrefixAttention", "PromptOutput", "PromptModule", "PromptedViT", "split_prefix", "task_key"]


def task_key(task: int) -> str:
    """Key of task ``task``'s prompt components (``"task_003"``), as for branches and heads."""
    return f"task_{task:03d}"


def split_prefix(prompts: Tensor) -> tuple[Tensor, Tensor]:
    """Split prompts ``(B, ..., L, D)`` into prefix keys and values, each ``(B, n·L/2, D)``.

    The official modules use the first half of each prompt's tokens as keys and
    the second half as values (``zoo.py``: ``i = int(e_p_length/2); Ek = P_[..., :i, :]``),
    flattening the selected prompts one after the other.
    """
    length = prompts.shape[-2]
    if length % 2:
        raise ValueError(f"a prefix prompt's length must be even (half keys, half values), got {length}")
    half = length // 2
    batch, dim = prompts.shape[0], prompts.shape[-1]
    return prompts[..., :half, :].reshape(batch, -1, dim), prompts[..., half:, :].reshape(batch, -1, dim)


# ----------------------------------------------------------------- attention
class PrefixAttention(nn.Module):
    """timm ``Attention`` whose keys and values can be extended by a prefix.

    With :attr:`prefix` ``= (pk, pv)``, each ``(B, Lp, attn_dim)``, computes
    ``softmax(q [k_p; k]ᵀ · scale) [v_p; v]`` per head; with no prefix it is
    timm's attention. The wrapped module's ``qkv`` (possibly an
    :class:`~model.lora.InfLoRAQKV`), ``q_norm``, ``k_norm`` (applied to the prefix
    keys too, so that they live on the same scale as the token keys),
    ``attn_drop``, ``norm``, ``gate``, ``proj``, ``proj_drop``, ``num_heads`` and
    ``scale`` are reused as they are.

    Args:
        attn: a timm :class:`timm.layers.Attention` (not a subclass with its own forward).
    """

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        if type(attn) is not Attention:
            raise TypeError(f"PrefixAttention wraps timm.layers.Attention, got {type(attn).__name__}")
        self.qkv = attn.qkv
        self.q_norm = attn.q_norm
        self.k_norm = attn.k_norm
        self.attn_drop = attn.attn_drop
        self.norm = getattr(attn, "norm", nn.Identity())
        self.gate = getattr(attn, "gate", None)
        self.proj = attn.proj
        self.proj_drop = attn.proj_drop
        self.num_heads: int = attn.num_heads
        self.head_dim: int = attn.head_dim
        self.attn_dim: int = attn.num_heads * attn.head_dim
        self.scale: float = attn.scale
        self.fused_attn: bool = bool(attn.fused_attn)
        # Set by PromptedViT for one prompted pass only; not state.
        self.prefix: tuple[Tensor, Tensor] | None = None

    def _heads(self, t: Tensor) -> Tensor:
        """``(B, L, attn_dim)`` → ``(B, H, L, head_dim)``."""
        return t.reshape(t.shape[0], t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.prefix is not None:
            pk, pv = self.prefix
            if pk.shape != pv.shape or pk.shape[0] != B or pk.shape[-1] != self.attn_dim:
                raise ValueError(
                    f"prefix keys/values must both be (B={B}, Lp, {self.attn_dim}), got {tuple(pk.shape)} and {tuple(pv.shape)}"
                )
            if is_causal:
                raise ValueError("a prefix cannot be combined with is_causal attention")
            k = torch.cat([self.k_norm(self._heads(pk.to(k.dtype))), k], dim=2)
            v = torch.cat([self._heads(pv.to(v.dtype)), v], dim=2)
            if attn_mask is not None:
                # Every query may attend to every prefix position.
                pad = True if attn_mask.dtype == torch.bool else 0.0
                attn_mask = F.pad(attn_mask, (pk.shape[1], 0), value=pad)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0,
                is_causal=is_causal, scale=self.scale,
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if is_causal:
                attn = attn.masked_fill(torch.ones(N, N, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
            if attn_mask is not None:
                attn = attn.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else attn + attn_mask
            out = self.attn_drop(attn.softmax(dim=-1)) @ v
        out = self.norm(out.transpose(1, 2).reshape(B, N, self.attn_dim))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


# ------------------------------------------------------------ prompt modules
@dataclass
class PromptOutput:
    """What a :class:`PromptModule` gives the prompted pass for one batch.

    Attributes:
        prefixes: block index → ``(pk, pv)``, each ``(B, Lp, D)``.
        tokens: ``(B, Lt, D)`` prompt tokens inserted after the position embedding, or ``None``.
        loss: scalar surrogate loss (already weighted), ``0`` when none.
    """

    prefixes: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    tokens: Tensor | None = None
    loss: Tensor | None = None


class PromptModule(nn.Module, ABC):
    """A method's prompts: what each block gets, given the frozen query.

    Subclasses hold their parameters structurally (per task where the method
    has per-task components) so that :meth:`task_parameters` and freezing need
    no parameter-name matching.

    Args:
        embed_dim: the backbone's width ``D`` (query, key and prompt size).
        layers: block indices that get prefixes (or ``(0,)`` for input tokens).
    """

    def __init__(self, embed_dim: int, layers: Sequence[int]) -> None:
        super().__init__()
        layers = tuple(int(i) for i in layers)
        if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
            raise ValueError(f"prompt layers must be distinct non-negative block indices, got {list(layers)}")
        self.embed_dim = embed_dim
        self.layers = layers
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    @abstractmethod
    def forward(self, query: Tensor, task: int, train: bool) -> PromptOutput:
        """Prompts for a batch.

        Args:
            query: ``(B, D)`` frozen [CLS] features of the unprompted backbone.
            task: the current task (the one being trained, or the last one trained).
            train: a training forward (the method's ``train=True`` branch).
        """

    def begin_task(self, task: int, generator: torch.Generator | None = None) -> None:
        """Create the task's components if the method adds any (idempotent)."""

    @abstractmethod
    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """The parameters that train during ``task``."""

    def state(self) -> dict[str, Tensor]:
        """Flat tensors of the module (detached, CPU, contiguous)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def load_state(self, state: Mapping[str, Tensor]) -> None:
        """Inverse of :meth:`state`; subclasses with per-task components create them first."""
        self.load_state_dict(dict(state), strict=True)


# ------------------------------------------------------------------- network
class PromptedViT(ContinualViT):
    """Frozen ViT + a prompt module + per-task heads.

    ``features(x)`` = query pass (no prompts, no grad) → prompt module →
    prompted pass. The heads are :class:`~model.net.ContinualViT`'s: their
    concatenation is the official single classifier, and CE over the current
    task's heads is the official masking of past logits.

    Query reuse: within one forward the query is computed once and every
    prompted block reads its prompts from it. In a non-training forward the
    query is also cached for the *same* input tensor (same object, unchanged
    in-place version), so calling ``forward`` twice on one batch (e.g. with
    different head subsets) encodes it once. A caller that already has the
    query may pass ``query=``.

    Args:
        backbone: headless timm VisionTransformer (``num_classes=0``).
        prompts: the method's :class:`PromptModule`.
        lora_blocks: passed to :class:`~model.net.ContinualViT` (its ``qkv`` wrappers
            without branches compute the base projection unchanged).
    """

    def __init__(self, backbone: nn.Module, prompts: PromptModule, lora_blocks: Sequence[int] | int | str | None = None) -> None:
        super().__init__(backbone, lora_blocks)
        depth = len(backbone.blocks)  # type: ignore[attr-defined]
        if max(prompts.layers) >= depth:
            raise ValueError(f"prompt layers {list(prompts.layers)} exceed the backbone's {depth} blocks")
        if prompts.embed_dim != self.embed_dim:
            raise ValueError(f"prompt module width {prompts.embed_dim} != backbone width {self.embed_dim}")
        self.prompts = prompts
        blocks = backbone.blocks  # type: ignore[attr-defined]
        for i in prompts.layers:
            if not isinstance(blocks[i].attn, PrefixAttention):
                blocks[i].attn = PrefixAttention(blocks[i].attn)
        self.task: int | None = None
        self._aux_loss: Tensor | None = None
        self._query_cache: tuple[Tensor, int, Tensor] | None = None

    # ------------------------------------------------------------- views
    @property
    def prefix_layers(self) -> dict[int, PrefixAttention]:
        blocks = self.backbone.blocks  # type: ignore[attr-defined]
        return {i: blocks[i].attn for i in self.prompts.layers}

    # ------------------------------------------------------------ forward
    @torch.no_grad()
    def query(self, x: Tensor, cache: bool = False) -> Tensor:
        """Final [CLS] feature of the unprompted, frozen backbone, ``(B, D)``; no grad.

        Args:
            x: images.
            cache: reuse/keep the result for this very tensor (non-training forwards).
        """
        if cache and self._query_cache is not None:
            cached_x, version, q = self._query_cache
            if cached_x is x and not x.is_inference() and x._version == version:
                return q
        q = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)  # type: ignore[attr-defined]
        self._query_cache = (x, x._version, q) if cache and not x.is_inference() else None
        return q

    def clear_query_cache(self) -> None:
        self._query_cache = None

    @contextmanager
    def _prefixes(self, prefixes: Mapping[int, tuple[Tensor, Tensor]]) -> Iterator[None]:
        layers = self.prefix_layers
        unknown = set(prefixes) - set(layers)
        if unknown:
            raise KeyError(f"prompt module returned prefixes for blocks {sorted(unknown)}, not wrapped")
        for i, p in prefixes.items():
            layers[i].prefix = p
        try:
            yield
        finally:
            for layer in layers.values():
                layer.prefix = None

    def _prompted_pass(self, x: Tensor, out: PromptOutput) -> Tensor:
        bb = self.backbone
        h = bb.patch_embed(x)  # type: ignore[attr-defined]
        h = bb._pos_embed(h)  # type: ignore[attr-defined]
        h = bb.patch_drop(h)  # type: ignore[attr-defined]
        n_prefix = int(getattr(bb, "num_prefix_tokens", 1))
        n_tokens = 0
        if out.tokens is not None:
            # [CLS (+ registers), prompt tokens, patches]: no position embedding on prompts.
            n_tokens = out.tokens.shape[1]
            h = torch.cat([h[:, :n_prefix], out.tokens.to(h.dtype), h[:, n_prefix:]], dim=1)
        h = bb.norm_pre(h)  # type: ignore[attr-defined]
        with self._prefixes(out.prefixes):
            h = bb.blocks(h)  # type: ignore[attr-defined]
        h = bb.norm(h)  # type: ignore[attr-defined]
        if n_tokens:
            h = torch.cat([h[:, :n_prefix], h[:, n_prefix + n_tokens :]], dim=1)
        return bb.forward_head(h, pre_logits=True)  # type: ignore[attr-defined]

    def features(self, x: Tensor, *, train: bool | None = None, query: Tensor | None = None) -> Tensor:
        """Prompted final [CLS] feature, ``(B, D)``.

        Args:
            x: images.
            train: training forward; default ``torch.is_grad_enabled()``.
            query: precomputed ``(B, D)`` query (skips the query pass).
        """
        if self.task is None:
            raise RuntimeError("call begin_task(task) before the first forward of a PromptedViT")
        train = torch.is_grad_enabled() if train is None else train
        if query is None:
            if train:
                self._query_cache = None
            query = self.query(x, cache=not train)
        out = self.prompts(query, self.task, train)
        loss = out.loss if (train and out.loss is not None) else None
        self._aux_loss = loss
        return self._prompted_pass(x, out)

    def forward(self, x: Tensor, heads: list[str] | None = None, *, train: bool | None = None, query: Tensor | None = None) -> Tensor:
        """Concatenated logits of ``heads`` (all seen heads when ``None``)."""
        return self.heads(self.features(x, train=train, query=query), heads)

    def aux_loss(self) -> Tensor:
        """Surrogate loss of the last training forward (scalar; 0 when none or after an eval forward)."""
        if self._aux_loss is None:
            return torch.zeros((), device=self.prompts.device)
        return self._aux_loss.reshape(())

    # ------------------------------------------------------------- tasks
    def begin_task(self, task: int, generator: torch.Generator | None = None) -> list[nn.Parameter]:
        """Start (or resume) ``task``: add its components, train only them; backbone frozen.

        Heads are left as they are (the method adds and trains the task's head).

        Returns:
            The prompt parameters that train in ``task`` (as :meth:`prompt_parameters_for`).
        """
        if task < 0:
            raise ValueError(f"task must be >= 0, got {task}")
        self.prompts.begin_task(task, generator)
        self.backbone.requires_grad_(False)
        self.prompts.requires_grad_(False)
        params = self.prompts.task_parameters(task)
        for p in params:
            p.requires_grad_(True)
        self.task = task
        self._aux_loss = None
        self._query_cache = None
        return params

    def prompt_parameters_for(self, task: int) -> list[nn.Parameter]:
        """The prompt parameters that train in ``task`` (heads not included)."""
        return self.prompts.task_parameters(task)

    # -------------------------------------------------------- persistence
    def prompt_state(self, head_names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Prompt tensors (``prompt.*``) and heads (``head.*``; all when ``None``), never the backbone."""
        state = {f"prompt.{k}": v for k, v in self.prompts.state().items()}
        heads = list(self.heads.heads) if head_names is None else list(head_names)
        state.update(self.adapter_state([], heads))
        return state

    def load_prompt_state(self, state: Mapping[str, Tensor]) -> None:
        """Inverse of :meth:`prompt_state`: creates missing components and heads, then copies."""
        self.load_adapter_state(state)

    def load_adapter_state(self, state: Mapping[str, Tensor], train_down: bool = False) -> None:
        """:class:`~model.net.ContinualViT`'s loader that also takes ``prompt.*`` tensors.

        The shared training step resumes a checkpoint through ``load_adapter_state``;
        routing the prompt keys here lets a prompt method's state go through it unchanged.
        """
        prompt = {k[len("prompt.") :]: v for k, v in state.items() if k.startswith("prompt.")}
        rest = {k: v for k, v in state.items() if not k.startswith("prompt.")}
        if prompt:
            self.prompts.load_state({k: v.to(self.prompts.device) for k, v in prompt.items()})
        if rest:
            super().load_adapter_state(rest, train_down)
        self._query_cache = None
