"""Settings of RanPAC (model code: :mod:`model.methods.ranpac`)."""

from __future__ import annotations

import numpy as np
from pydantic import field_validator

from ..published import PublishedFigure
from .base import LoRAConfig, Targets, declare_method, setting

__all__ = ["RanPACConfig", "OFFICIAL_RIDGES"]

OFFICIAL_RIDGES: list[float] = (10.0 ** np.arange(-8, 9)).tolist()
"""``optimise_ridge_parameter``: ``10.0 ** np.arange(-8, 9)`` (numpy's values: 10⁻⁵ is 9.999999999999999e-06)."""

RANPAC_TABLES = "RanPAC repository, paper_tables/Table_data_main_*.csv (Algorithm 1)"


# RanPAC/RanPAC paper_tables/Table_data_main_<dataset>.csv, row "Algorithm 1": final accuracy (%), one run;
# no average accuracy is published. Their protocol is RanPAC's own: classes shuffled with numpy seed 1993,
# AdaptFormer (CIFAR-100, CUB) or SSF (ImageNet-R) Phase 1, ViT-B/16 in21k (CIFAR-100) or in21k+in1k, M = 10000,
# RandomResizedCrop scale (0.05, 1), bicubic test resize, the pre-split train/test folders (ImageNet-R, CUB):
# configs/paper/<cell>_ranpac_official.yaml.
PUBLISHED = (
    PublishedFigure("cifar100", 10, "92.2", "n/a", RANPAC_TABLES, protocol="cifar100_10_ranpac_official"),
    PublishedFigure("imagenet_r", 10, "77.9", "n/a", RANPAC_TABLES, protocol="imagenet_r_10_ranpac_official"),
    PublishedFigure("cub", 10, "90.3", "n/a", RANPAC_TABLES, protocol="cub_10_ranpac_official"),
)


@declare_method("ranpac", published=PUBLISHED)
class RanPACConfig(LoRAConfig):
    """Settings of RanPAC: the Phase-1 LoRA branch (``rank``, ``blocks``, ``targets``), the projection and the ridge."""

    projection_dim: int = setting(10000, "M, width of the random projection (official 10000); 0: no projection (the 'no RP' ablation)",
                                  search=True, ge=0)
    ridges: list[float] = setting(OFFICIAL_RIDGES, "candidate ridge parameters lambda (official 1e-8 ... 1e8)", min_length=1)
    ridge_val_fraction: float = setting(0.2, "share of each session's samples that scores the lambdas (official: the last 20% of a shuffled pass)",
                                        gt=0.0, lt=1.0)
    adapt_first_session: bool = setting(True, "Phase 1: train a LoRA branch and a head on the first task, then freeze (false: 'no Phase 1')")
    targets: Targets = setting(("q", "v"), "rows of qkv the Phase-1 branch adapts")

    @field_validator("ridges")
    @classmethod
    def _positive(cls, ridges: list[float]) -> list[float]:
        if any(not r > 0 for r in ridges):
            raise ValueError(f"must all be > 0, got {ridges}")
        return ridges
