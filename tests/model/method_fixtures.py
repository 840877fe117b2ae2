"""A tiny ViT and synthetic two-class tasks for the method tests (seconds on one core)."""

from __future__ import annotations

import torch

from model import create_backbone

OVERRIDES = {"img_size": 8, "patch_size": 4, "in_chans": 1, "embed_dim": 16, "depth": 2, "num_heads": 2}


def tiny_backbone(depth: int = 2):
    """timm's ``vit_tiny_patch16_224`` shrunk to 8×8 one-channel inputs, width 16, the same weights every call."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return create_backbone("vit_tiny_patch16_224", overrides={**OVERRIDES, "depth": depth})


def task_batches(seed: int, offset: int, n: int = 64, shift: float = 0.0):
    """Batches of 16 images whose label (``offset`` or ``offset + 1``) is the sign of their mean minus ``shift · seed``;
    inputs shifted by ``shift · seed`` so that tasks differ in their input distribution."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g) + shift * seed
    y = (x.mean(dim=(1, 2, 3)) > shift * seed).long() + offset
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]
