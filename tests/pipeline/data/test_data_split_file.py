"""Declared split files (CODA-Prompt YAML lists, ``path label`` text lists) and ``data.split_seed``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data_fixtures import WNIDS, imagenet_r_root, write_class_folders  # noqa: F401,F811  (fixture)
from pipeline.config import ConfigError, DataConfig, config_from_dict
from pipeline.data import DatasetError, load_dataset, make_split
from pipeline.data.split import held_out_whole_pool

PREFIX = "data/imagenet-r/"


def _listed(root: Path) -> tuple[list[str], list[int], list[str], list[int]]:
    """Train / test lists as CODA-Prompt writes them: every third image of each class is a test image."""
    train, train_y, test, test_y = [], [], [], []
    for label, wnid in enumerate(WNIDS):
        for i in range(10):
            path = f"{PREFIX}{wnid}/img_{i:03d}.jpg"
            (test if i % 3 == 0 else train).append(path)
            (test_y if i % 3 == 0 else train_y).append(label)
    return train, train_y, test, test_y


def _write_yaml(path: Path, files: list[str], targets: list[int]) -> Path:
    path.write_text(yaml.safe_dump({"data": files, "targets": targets}))
    return path


def _write_text(path: Path, files: list[str], targets: list[int]) -> Path:
    path.write_text("".join(f"{f} {t}\n" for f, t in zip(files, targets)))
    return path


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(name="imagenet_r", root=str(root / "imagenet-r"), image_size=8, split_prefix=PREFIX, **kw)


def test_yaml_lists_replace_the_pools(imagenet_r_root, tmp_path):
    train, train_y, test, test_y = _listed(imagenet_r_root)
    tr = _write_yaml(tmp_path / "imagenet-r_train.yaml", train, train_y)
    te = _write_yaml(tmp_path / "imagenet-r_test.yaml", test, test_y)
    source = load_dataset(_cfg(imagenet_r_root, split_file=str(tr), split_file_test=str(te)))
    folder = imagenet_r_root / "imagenet-r"
    assert source.has_test_split
    assert [Path(p.decode()) for p in source.train.files] == [folder / p[len(PREFIX):] for p in train]
    assert source.train_targets.tolist() == train_y and source.test_targets.tolist() == test_y
    assert len(source.train) == 4 * 6 and len(source.test) == 4 * 4
    assert source.class_names == WNIDS  # the parent folder of each label's images
    assert source.info["split_file_sha256"] == hashlib.sha256(tr.read_bytes()).hexdigest()
    assert source.info["split_file_test_sha256"] == hashlib.sha256(te.read_bytes()).hexdigest()
    image, label = source.test[5]
    assert image.shape == (3, 8, 8) and label == test_y[5]


def test_text_lists_read_the_same_split(imagenet_r_root, tmp_path):
    train, train_y, test, test_y = _listed(imagenet_r_root)
    from_yaml = load_dataset(_cfg(
        imagenet_r_root,
        split_file=str(_write_yaml(tmp_path / "a.yaml", train, train_y)),
        split_file_test=str(_write_yaml(tmp_path / "b.yaml", test, test_y)),
    ))
    from_text = load_dataset(_cfg(
        imagenet_r_root,
        split_file=str(_write_text(tmp_path / "imagenet_r_train.txt", train, train_y)),
        split_file_test=str(_write_text(tmp_path / "imagenet_r_val.txt", test, test_y)),
    ))
    assert np.array_equal(from_yaml.train.files, from_text.train.files)
    assert np.array_equal(from_yaml.test.files, from_text.test.files)
    assert np.array_equal(from_yaml.test_targets, from_text.test_targets)
    assert from_yaml.info["split_file_sha256"] != from_text.info["split_file_sha256"]


def test_missing_files_name_the_first_and_the_count(imagenet_r_root, tmp_path):
    train, train_y, _, _ = _listed(imagenet_r_root)
    gone = [f"{PREFIX}{WNIDS[1]}/gone_{i}.jpg" for i in range(3)]
    lst = _write_yaml(tmp_path / "train.yaml", train + gone, train_y + [1, 1, 1])
    with pytest.raises(DatasetError, match=rf"3 of {len(train) + 3} listed images are missing, the first .*gone_0\.jpg"):
        load_dataset(_cfg(imagenet_r_root, split_file=str(lst)))


def test_prefix_must_match(imagenet_r_root, tmp_path):
    lst = _write_text(tmp_path / "train.txt", [f"other/{WNIDS[0]}/img_000.jpg"], [0])
    with pytest.raises(DatasetError, match="does not start with data.split_prefix"):
        load_dataset(_cfg(imagenet_r_root, split_file=str(lst)))


def test_malformed_lists_are_rejected(imagenet_r_root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": ["a.jpg", "b.jpg"], "targets": [0]}))
    with pytest.raises(DatasetError, match="2 paths in 'data' but 1 labels"):
        load_dataset(_cfg(imagenet_r_root, split_file=str(bad)))
    text = tmp_path / "bad.txt"
    text.write_text(f"{PREFIX}{WNIDS[0]}/img_000.jpg zero\n")
    with pytest.raises(DatasetError, match=r"bad.txt:1: expected '<relative path> <label>'"):
        load_dataset(_cfg(imagenet_r_root, split_file=str(text)))


def test_split_record_carries_the_hash(imagenet_r_root, tmp_path):
    train, train_y, test, test_y = _listed(imagenet_r_root)
    tr = _write_yaml(tmp_path / "train.yaml", train, train_y)
    te = _write_yaml(tmp_path / "test.yaml", test, test_y)
    source = load_dataset(_cfg(imagenet_r_root, split_file=str(tr), split_file_test=str(te)))
    split = make_split(source, num_tasks=2, seed=0, class_order="fixed", val_fraction=0.0)
    assert split.protocol["test_split"] == "split file"
    assert split.protocol["split_file_sha256"] == hashlib.sha256(tr.read_bytes()).hexdigest()
    assert split.protocol["split_file_test"] == str(te)
    assert sorted(i for t in split.test for i in t) == list(range(len(test)))  # the listed test images, all of them
    assert type(split).from_dict(split.to_dict()).protocol == split.protocol


def test_config_keys(tmp_path):
    with pytest.raises(ConfigError, match="data.split_file_test and data.split_prefix need data.split_file"):
        config_from_dict({"data": {"name": "imagenet_r", "split_file_test": "t.yaml"}})
    with pytest.raises(ConfigError, match="data.split_file lists image files; data set 'cifar100'"):
        config_from_dict({"data": {"name": "cifar100", "split_file": "t.yaml"}})
    cfg = config_from_dict({"data": {"name": "imagenet_r", "split_file": "s/train.yaml", "split_file_test": "s/test.yaml"}}, tmp_path)
    assert cfg.data.split_file == str(tmp_path / "s" / "train.yaml")
    assert cfg.data.split_file_test == str(tmp_path / "s" / "test.yaml")


# ------------------------------------------------------------------ data.split_seed
def test_whole_pool_draw_is_the_reference_random_split():
    """InfLoRA: ``torch.manual_seed(seed)`` then ``random_split(dataset, [int(0.8 N), N - int(0.8 N)])``."""
    n = 103
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        _, reference_test = torch.utils.data.random_split(range(n), [int(0.8 * n), n - int(0.8 * n)])
    assert held_out_whole_pool(n, 0.2, 7).tolist() == sorted(reference_test.indices)
    assert len(held_out_whole_pool(n, 0.2, 7)) == n - 82


def test_split_seed_shares_one_split_across_run_seeds(imagenet_r_root):
    source = load_dataset(DataConfig(name="imagenet_r", root=str(imagenet_r_root), image_size=8))
    splits = [make_split(source, 2, seed, "fixed", 0.1, test_fraction=0.2, split_seed=0) for seed in (0, 1, 2)]
    held_out = sorted(i for t in splits[0].test for i in t)
    assert held_out == held_out_whole_pool(40, 0.2, 0).tolist()  # one draw over all 40 images, 8 of them test
    for split in splits[1:]:
        assert split.test == splits[0].test
    assert splits[0].val != splits[1].val  # the validation carve-out still follows the run seed
    for split in splits:
        for t in range(2):
            assert not set(split.test[t]) & (set(split.train[t]) | set(split.val[t]))
    assert splits[0].protocol["split_seed"] == 0 and "InfLoRA" in splits[0].protocol["test_split"]
    per_class = make_split(source, 2, 0, "fixed", 0.1, test_fraction=0.2)
    assert per_class.protocol["test_split"].endswith("seeded by the run seed")
    assert [len(t) for t in per_class.test] == [4, 4]  # per class: 2 of each class's 10


def test_split_stage_records_the_protocol(imagenet_r_root, tmp_path):
    """The split stage writes the protocol into ``split.json`` and into its result (what MLflow gets)."""
    from pipeline.running.stages import RunSpec, init_run_dir, run_stage
    from pipeline.running.state import StageKey

    train, train_y, test, test_y = _listed(imagenet_r_root)
    tr = _write_yaml(tmp_path / "train.yaml", train, train_y)
    te = _write_text(tmp_path / "test.txt", test, test_y)
    cfg = config_from_dict({
        "backbone": {"name": "vit_tiny_patch16_224", "pretrained": False},
        "data": {"name": "imagenet_r", "root": str(imagenet_r_root / "imagenet-r"), "num_tasks": 2, "image_size": 8,
                 "val_fraction": 0.0, "split_file": str(tr), "split_file_test": str(te), "split_prefix": PREFIX},
        "tracking": {"enabled": False},
    })
    spec = RunSpec(cfg, 3, str(tmp_path / "run"))
    run_dir = init_run_dir(spec, {})
    info = run_stage(spec, StageKey.split())
    expected = {
        "test_split": "split file",
        "split_file": str(tr), "split_file_sha256": hashlib.sha256(tr.read_bytes()).hexdigest(),
        "split_file_test": str(te), "split_file_test_sha256": hashlib.sha256(te.read_bytes()).hexdigest(),
    }
    assert info["info"]["protocol"] == expected
    assert run_dir.read_json("split.json")["protocol"] == expected
    assert sorted(info["info"]["class_order"]) == [0, 1, 2, 3]


def test_split_seed_holds_out_the_images_the_official_code_does(imagenet_r_root):
    """InfLoRA ``iIMAGENET_R.download_data``: ``torch.manual_seed(seed)`` (trainer ``_set_random``), then
    ``random_split(datasets.ImageFolder(data_path), [int(0.8 N), N - int(0.8 N)])``; the val part is the test split."""
    from torchvision import datasets

    folder = imagenet_r_root / "imagenet-r"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        official = datasets.ImageFolder(str(folder))
        n = len(official)
        _, val = torch.utils.data.random_split(official, [int(0.8 * n), n - int(0.8 * n)])
    official_test = {official.imgs[i][0] for i in val.indices}
    source = load_dataset(DataConfig(name="imagenet_r", root=str(imagenet_r_root), image_size=8))
    split = make_split(source, 2, seed=4, class_order="fixed", val_fraction=0.0, test_fraction=0.2, split_seed=0)
    ours = {source.measure_pool.files[i].decode() for t in split.test for i in t}
    assert ours == official_test and len(ours) == 8
