"""configs/paper/*.yaml: every table cell of the paper (and its b5 variant) loads with the paper's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_fixtures import cifar_root, domainnet_root, imagenet_r_root  # noqa: F401,F811  (fixtures)
from pipeline.config import load_config
from pipeline.data import load_dataset
from pipeline.data.transforms import resolve_normalization
from pipeline.report import PAPER_RESULTS

PAPER_DIR = Path(__file__).resolve().parents[3] / "configs" / "paper"
CELLS = ["imagenet_r_5", "imagenet_r_10", "imagenet_r_20", "cifar100_10", "domainnet_5"]

# name: (data set, tasks, optimizer, lr, epochs, rank, lamb, dual memory)
EXPECTED = {
    "imagenet_r_5": ("imagenet_r", 5, "adam", 5e-4, 50, 10, 0.98, True),
    "imagenet_r_10": ("imagenet_r", 10, "adam", 5e-4, 50, 10, 0.98, True),
    "imagenet_r_20": ("imagenet_r", 20, "adam", 5e-4, 50, 10, 0.98, True),
    "cifar100_10": ("cifar100", 10, "adam", 5e-4, 20, 10, 0.95, True),
    "domainnet_5": ("domainnet", 5, "sgd", 5e-3, 5, 30, 0.95, False),  # reference InfLoRA_domain: plain GPM
    # b5: the reference's *_inflorab5.json (lr 1e-3 on CIFAR-100, lamb 0.99 on ImageNet-R 10 tasks)
    "imagenet_r_5_b5": ("imagenet_r", 5, "adam", 5e-4, 50, 10, 0.98, False),
    "imagenet_r_10_b5": ("imagenet_r", 10, "adam", 5e-4, 50, 10, 0.99, False),
    "imagenet_r_20_b5": ("imagenet_r", 20, "adam", 5e-4, 50, 10, 0.98, False),
    "cifar100_10_b5": ("cifar100", 10, "adam", 1e-3, 20, 10, 0.95, False),
    "domainnet_5_b5": ("domainnet", 5, "sgd", 5e-3, 5, 30, 0.95, False),
}


def test_every_cell_has_a_config():
    assert sorted(p.stem for p in PAPER_DIR.glob("*.yaml")) == sorted(EXPECTED)
    assert set(CELLS) == set(PAPER_RESULTS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_config(name):
    cfg = load_config(PAPER_DIR / f"{name}.yaml")
    dataset, tasks, optimizer, lr, epochs, rank, lamb, dual = EXPECTED[name]
    assert cfg.name == name
    assert cfg.seeds == [0, 1, 2, 3, 4]
    b = cfg.backbone
    assert (b.name, b.pretrained, b.checkpoint) == ("vit_base_patch16_224.augreg_in21k", True, None)
    d = cfg.data
    assert (d.name, d.num_tasks, d.image_size, d.normalization, d.num_workers) == (dataset, tasks, 224, "none", 8)
    assert Path(d.root).is_absolute() and Path(d.root).parts[-2:] == ("data", dataset)
    assert resolve_normalization(d.normalization, cfg.backbone.name) is None
    t = cfg.train
    assert (t.optimizer, t.lr, t.epochs, t.batch_size, t.weight_decay) == (optimizer, pytest.approx(lr), epochs, 128, 0.0)
    if optimizer == "sgd":
        assert t.momentum == 0.9
    assert cfg.lora.rank == rank and cfg.lora.blocks == (5 if name.endswith("_b5") else "all")
    m = cfg.method
    assert (m.name, m.lamb, m.lame, m.dual_memory) == ("inflora", lamb, 1.0, dual)
    assert (cfg.resources.gpus_per_stage, cfg.resources.cpus_per_stage) == (1, 4)


@pytest.mark.parametrize(
    "name, fixture", [("cifar100_10", "cifar_root"), ("imagenet_r_10", "imagenet_r_root"), ("domainnet_5", "domainnet_root")]
)
def test_paper_config_reads_its_data_set(name, fixture, request):
    root = request.getfixturevalue(fixture)
    cfg = load_config(PAPER_DIR / f"{name}.yaml", [f"data.root={root}", "data.image_size=8"])
    source = load_dataset(cfg.data, resolve_normalization(cfg.data.normalization, cfg.backbone.name))
    assert source.train[0][0].shape == (3, 8, 8)
    assert source.has_test_split == (name != "imagenet_r_10")
