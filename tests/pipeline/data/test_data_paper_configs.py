"""configs/paper/*.yaml: the paper's cells read their data sets (values vs the official JSON: tests/test_paper_configs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_fixtures import WNIDS, cifar_root, domainnet_root, imagenet_r_root, write_class_folders, write_cub_archive  # noqa: F401,F811  (fixtures)
from pipeline.config import load_config
from pipeline.data import load_dataset
from pipeline.data.transforms import resolve_normalization
from pipeline.reporting.report import published_figures

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


@pytest.mark.parametrize("name", ["cub_10", "cub_10_ranpac", "imagenet_a_10", "imagenet_a_10_sd_lora", "imagenet_a_10_coda_prompt"])
def test_new_benchmark_configs_read_their_data_sets(name, tmp_path):
    if name.startswith("cub"):
        write_cub_archive(tmp_path / "CUB_200_2011")
    else:
        write_class_folders(tmp_path / "imagenet-a" / "train", WNIDS, per_class=2)
        write_class_folders(tmp_path / "imagenet-a" / "test", WNIDS, per_class=1, seed=1)
    cfg = load_config(PAPER_DIR / f"{name}.yaml", [f"data.root={tmp_path}", "data.image_size=8"])
    source = load_dataset(cfg.data, resolve_normalization(cfg.data.normalization, cfg.backbone.name))
    assert source.has_test_split and source.train[0][0].shape == (3, 8, 8)
