"""configs/paper/*.yaml: the paper's cells read their data sets (values vs the official JSON: tests/test_paper_configs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_fixtures import cifar_root, domainnet_root, imagenet_r_root  # noqa: F401,F811  (fixtures)
from pipeline.config import load_config
from pipeline.data import load_dataset
from pipeline.data.transforms import resolve_normalization
from pipeline.report import published_figures

PAPER_DIR = Path(__file__).resolve().parents[3] / "configs" / "paper"
CELLS = ["imagenet_r_5", "imagenet_r_10", "imagenet_r_20", "cifar100_10", "domainnet_5"]
# Every config's values against the official JSON: tests/test_paper_configs.py.


def test_every_cell_has_a_paper_figure():
    assert set(CELLS) == {f.protocol for f in published_figures()["inflora"] if f.source == "InfLoRA paper"}
    assert all((PAPER_DIR / f"{c}.yaml").is_file() for c in CELLS)


@pytest.mark.parametrize(
    "name, fixture", [("cifar100_10", "cifar_root"), ("imagenet_r_10", "imagenet_r_root"), ("domainnet_5", "domainnet_root")]
)
def test_paper_config_reads_its_data_set(name, fixture, request):
    root = request.getfixturevalue(fixture)
    cfg = load_config(PAPER_DIR / f"{name}.yaml", [f"data.root={root}", "data.image_size=8"])
    source = load_dataset(cfg.data, resolve_normalization(cfg.data.normalization, cfg.backbone.name))
    assert source.train[0][0].shape == (3, 8, 8)
    assert source.has_test_split == (name != "imagenet_r_10")
