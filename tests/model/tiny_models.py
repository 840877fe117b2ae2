"""The tiny ViT and the two-class toy tasks the method tests share (not a test module)."""

from __future__ import annotations

import torch

from model import create_backbone

OVERRIDES = {"img_size": 8, "patch_size": 4, "in_chans": 1, "embed_dim": 16, "depth": 2, "num_heads": 2}


def backbone():
    """A randomly initialised 2-block, 16-wide ViT on 8×8 single-channel images (seed 0)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return create_backbone("vit_tiny_patch16_224", overrides=OVERRIDES)


def task_batches(seed: int, offset: int, n: int = 64):
    """``n`` noise images in batches of 16, labelled ``offset`` or ``offset + 1`` by the sign of their mean."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + offset
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]
