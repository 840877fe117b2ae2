"""The continual ViT: a frozen timm backbone, InfLoRA-wrapped ``qkv`` layers and task heads."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from torch import Tensor, nn

from .heads import TaskHeads
from .lora import LoRABranch, LoRAQKV

__all__ = ["ContinualViT", "resolve_lora_blocks"]


def resolve_lora_blocks(depth: int, blocks: Sequence[int] | int | str | None) -> list[int]:
    """Indices of the blocks that get LoRA branches.

    Args:
        depth: number of transformer blocks.
        blocks: ``None``/``"all"`` for every block, an int ``n`` for the first ``n``
            (the paper's b5 variant is ``5``), or an explicit list of indices
            (empty: no block is wrapped, e.g. for a frozen backbone).
    """
    if blocks is None or blocks == "all":
        return list(range(depth))
    if isinstance(blocks, int):
        if not 1 <= blocks <= depth:
            raise ValueError(f"lora blocks must be in [1, {depth}], got {blocks}")
        return list(range(blocks))
    if isinstance(blocks, str):
        raise ValueError(f"lora blocks must be 'all', an int or a list of ints, got {blocks!r}")
    indices = sorted(set(int(b) for b in blocks))
    if not indices:
        return []
    if indices[0] < 0 or indices[-1] >= depth:
        raise ValueError(f"lora block indices must lie in [0, {depth}), got {list(blocks)}")
    return indices


class ContinualViT(nn.Module):
    """Frozen ViT + LoRA branches on the ``qkv`` of chosen blocks + per-task heads.

    The backbone's ``blocks[i].attn.qkv`` linear layers are swapped for
    :class:`~model.lora.LoRAQKV` wrappers; timm's attention code is untouched.
    Which rows a branch adapts (q, k, v) is the branch's (the method's) choice.

    Args:
        backbone: headless timm VisionTransformer (``num_classes=0``).
        lora_blocks: which blocks to wrap (see :func:`resolve_lora_blocks`).
    """

    def __init__(self, backbone: nn.Module, lora_blocks: Sequence[int] | int | str | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        blocks = backbone.blocks  # type: ignore[attr-defined]
        self.lora_block_indices = resolve_lora_blocks(len(blocks), lora_blocks)
        for i in self.lora_block_indices:
            attn = blocks[i].attn
            if isinstance(attn.qkv, LoRAQKV):
                continue
            attn.qkv = LoRAQKV(attn.qkv)
        self.heads = TaskHeads(backbone.num_features)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ views
    @property
    def lora_layers(self) -> dict[str, LoRAQKV]:
        """Wrapped layers keyed by their stable name (``"blocks.3.attn.qkv"``)."""
        blocks = self.backbone.blocks  # type: ignore[attr-defined]
        return {f"blocks.{i}.attn.qkv": blocks[i].attn.qkv for i in self.lora_block_indices}

    @property
    def embed_dim(self) -> int:
        return int(self.backbone.num_features)  # type: ignore[attr-defined]

    # ---------------------------------------------------------------- forward
    def features(self, x: Tensor) -> Tensor:
        """Final CLS feature (after the backbone's last norm), ``(B, D)``."""
        return self.backbone(x)

    def forward(self, x: Tensor, heads: list[str] | None = None) -> Tensor:
        """Concatenated logits of ``heads`` (all seen heads when ``None``)."""
        return self.heads(self.features(x), heads)

    # --------------------------------------------------------------- branches
    def add_branches(
        self, name: str, downs: Mapping[str, Tensor], train_down: bool = False, targets: Sequence[str] = ("k", "v")
    ) -> None:
        """Add branch ``name`` to every wrapped layer, with its ``(r, d)`` down-projection."""
        layers = self.lora_layers
        if set(downs) != set(layers):
            raise ValueError(f"down-projections given for {sorted(downs)}, expected every wrapped layer {sorted(layers)}")
        for layer_name, layer in layers.items():
            layer.add_branch(name, downs[layer_name], train_down=train_down, targets=targets)

    def freeze_all(self) -> None:
        """Freeze every parameter (structural; trainability is then set per module)."""
        self.requires_grad_(False)

    def branch_parameters(self, name: str) -> Iterator[nn.Parameter]:
        for layer in self.lora_layers.values():
            yield from layer.branches[name].parameters()

    def set_branch_trainable(self, name: str, trainable: bool = True) -> list[nn.Parameter]:
        """Make branch ``name`` trainable in every layer; returns its trainable parameters."""
        params: list[nn.Parameter] = []
        for layer in self.lora_layers.values():
            branch = layer.branches[name]
            branch.set_trainable(trainable)  # type: ignore[operator]
            params.extend(p for p in branch.parameters() if p.requires_grad)
        return params

    # ----------------------------------------------------------- measurement
    @contextmanager
    def collecting_covariance(self) -> Iterator[None]:
        """Within the block, every wrapped layer accumulates the covariance of its input."""
        layers = list(self.lora_layers.values())
        for layer in layers:
            layer.reset_covariance()
            layer.collect_covariance = True
        try:
            yield
        finally:
            for layer in layers:
                layer.collect_covariance = False

    def covariances(self) -> dict[str, Tensor]:
        return {name: layer.covariance() for name, layer in self.lora_layers.items()}

    @contextmanager
    def probing(self, probes: Mapping[str, nn.Module]) -> Iterator[None]:
        """Within the block, each wrapped layer accumulates the output norm of its probe branch.

        A probe is measured on the layer's input but never added to its output.
        """
        layers = self.lora_layers
        if set(probes) != set(layers):
            raise ValueError(f"probes given for {sorted(probes)}, expected {sorted(layers)}")
        for name, layer in layers.items():
            layer.set_probe(probes[name])
        try:
            yield
        finally:
            for layer in layers.values():
                layer._probe.clear()

    def probe_mean_sq_norm(self) -> float:
        """Mean squared norm of the probed branch's k and v outputs per token, over layers."""
        total = sum(float(layer.probe_sq_norm) for layer in self.lora_layers.values())
        count = sum(float(layer.probe_count) for layer in self.lora_layers.values())
        if count == 0:
            raise RuntimeError("no input was seen while probing the branch")
        return total / count

    # ------------------------------------------------------------ persistence
    def adapter_state(self, branch_names: Sequence[str], head_names: Sequence[str]) -> dict[str, Tensor]:
        """Tensors of the given branches and heads only (never the backbone)."""
        state: dict[str, Tensor] = {}
        for layer_name, layer in self.lora_layers.items():
            for b in branch_names:
                for pname, p in layer.branches[b].named_parameters():
                    state[f"lora.{layer_name}.{b}.{pname}"] = p.detach().cpu().contiguous()
        for h in head_names:
            for pname, p in self.heads.heads[h].named_parameters():
                state[f"head.{h}.{pname}"] = p.detach().cpu().contiguous()
        return state

    def make_branch(self, layer: LoRAQKV, tensors: Mapping[str, Tensor], train_down: bool = False) -> nn.Module:
        """A new, empty branch of the kind stored as ``tensors`` (subclasses add other kinds)."""
        targets = [k[len("up_"):] for k in tensors if k.startswith("up_")]
        return LoRABranch(tensors["down"], layer.attn_dim, targets=targets, train_down=train_down)

    def extra_state(self) -> dict[str, Tensor]:
        """Method-specific tensors saved beside branches and heads (none here)."""
        return {}

    def load_extra_state(self, kind: str, key: str, value: Tensor) -> None:
        """Load one tensor of :meth:`extra_state` (``kind.key``); subclasses that save any override this."""
        raise KeyError(f"unexpected adapter key {kind}.{key!r}")

    def load_adapter_state(self, state: Mapping[str, Tensor], train_down: bool = False) -> None:
        """Create or overwrite the branches, heads (and extra state) found in ``state``."""
        layers = self.lora_layers
        branches: dict[tuple[str, str], dict[str, Tensor]] = {}
        heads: dict[str, dict[str, Tensor]] = {}
        for key, value in state.items():
            kind, rest = key.split(".", 1)
            if kind == "lora":
                layer_name, branch, pname = rest.rsplit(".", 2)
                if layer_name not in layers:
                    raise KeyError(f"adapter state has layer {layer_name!r}, which this model does not wrap")
                branches.setdefault((layer_name, branch), {})[pname] = value
            elif kind == "head":
                head, pname = rest.rsplit(".", 1)
                heads.setdefault(head, {})[pname] = value
            else:
                self.load_extra_state(kind, rest, value)
        # safetensors does not keep key order; names are zero-padded, so sorted = task order
        for (layer_name, branch), tensors in sorted(branches.items()):
            layer = layers[layer_name]
            if branch not in layer.branches:
                layer.add_module_branch(branch, self.make_branch(layer, tensors, train_down))
            layer.branches[branch].load_state_dict(tensors)
        for head, tensors in sorted(heads.items()):
            if head not in self.heads.heads:
                self.heads.add(head, tensors["weight"].shape[0])
            self.heads.heads[head].load_state_dict(tensors)
