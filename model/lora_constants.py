"""The torch-free facts of LoRA branches: which rows of ``qkv`` they may adapt, and the reference scale.

Settings validate against these (:mod:`model.methods.config`) without importing the
branch modules (:mod:`model.lora`, which needs torch), so that a run config is checked
in a fraction of a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["REFERENCE_DOWN_SCALE", "TARGETS", "check_targets"]

# The official code stores the designed down-projection divided by √3
# (``U[:, :r].T / math.sqrt(3)``); the published learning rates were tuned with it.
REFERENCE_DOWN_SCALE = 1.0 / math.sqrt(3.0)

TARGETS = ("q", "k", "v")
"""Row blocks of timm's fused ``qkv`` output, in storage order."""


def check_targets(targets: Sequence[str]) -> tuple[str, ...]:
    """``targets`` as a tuple in q, k, v order; raises on unknown or repeated names."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets or len(set(targets)) != len(targets):
        raise ValueError(f"LoRA targets must be distinct names among {list(TARGETS)}, got {list(targets)}")
    return tuple(t for t in TARGETS if t in targets)
