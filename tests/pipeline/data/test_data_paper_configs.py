"""configs/paper/*.yaml: the paper's cells read their data sets (values vs the official JSON: tests/test_paper_configs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_fixtures import WNIDS, cifar_root, domainnet_root, imagenet_r_root, write_class_folders, write_cub_archive  # noqa: F401,F811  (fixtures)
from pipeline.config import load_config
from pipeline.data import DatasetError, load_dataset
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


@pytest.mark.parametrize("name, folder", [("imagenet_r_10_ranpac_official", "imagenet-r"), ("cub_10_ranpac_official", "cub"),
                                          ("imagenet_r_10_sd_lora_official", "imagenet-r"), ("imagenet_r_40_cl_lora_official", "imagenet-r")])
def test_own_protocol_configs_read_the_pre_split_folders_only(name, folder, tmp_path):
    if folder == "cub":  # the archive alone is not that protocol's data
        write_cub_archive(tmp_path / "CUB_200_2011")
    else:
        write_class_folders(tmp_path / folder, WNIDS, per_class=2)  # one pool: the split stage would draw a test split
    cfg = load_config(PAPER_DIR / f"{name}.yaml", [f"data.root={tmp_path}", "data.image_size=8"])
    norm = resolve_normalization(cfg.data.normalization, cfg.backbone.name)
    with pytest.raises(DatasetError, match="split_folders: true needs the pre-split copy"):
        load_dataset(cfg.data, norm)
    classes = WNIDS if folder == "imagenet-r" else [f"{i:03d}.bird" for i in range(1, 4)]
    write_class_folders(tmp_path / folder / "train", classes, per_class=2)
    write_class_folders(tmp_path / folder / "test", classes, per_class=1, seed=1)
    source = load_dataset(cfg.data, norm)
    assert source.has_test_split and len(source.test) == len(classes) and source.test[0][0].shape == (3, 8, 8)
