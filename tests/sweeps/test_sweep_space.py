"""Sweep files and search spaces: valid ones load, bad ones fail with a message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sweep_fixtures import tiny_sweep_dict

from pipeline.config import ConfigError
from sweeps.config import load_sweep, sweep_from_dict
from sweeps.space import SearchSpace, embedding_dim

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def weights_path(tmp_path) -> Path:
    """Validation never opens the weights: a path is enough (no pretraining here)."""
    return tmp_path / "tiny.safetensors"


def _sweep(tmp_path, checkpoint, sweep=None, **sections):
    return sweep_from_dict(tiny_sweep_dict(tmp_path, checkpoint, sweep, **sections))


def test_demo_sweep_file_loads():
    sweep = load_sweep(ROOT / "configs" / "sweep_demo.yaml")
    assert sweep.space.names == ["rank", "lamb", "lr"]
    assert sweep.base.name == "demo" and sweep.base.train.epochs == 5  # merged over demo.yaml
    assert sweep.config.enqueue == [{"rank": 4, "lamb": 0.95, "lr": 5.0e-3}]
    assert sweep.storage_url == f"sqlite:///{sweep.dir / 'optuna.db'}"
    assert sweep.num_sessions == 5


def test_space_maps_parameters_to_config_keys(tmp_path, weights_path):
    space = {
        "rank": {"low": 1, "high": 32},
        "lamb": {"low": 0.8, "high": 0.999},
        "lame": {"values": [0.99, 1.0]},
        "lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "epochs": {"low": 1, "high": 5, "step": 2},
    }
    sweep = _sweep(tmp_path, weights_path, {"space": space})
    dists = sweep.space.distributions()
    assert (dists["rank"].low, dists["rank"].high) == (1, 32)
    assert dists["lr"].log and not dists["lamb"].log
    assert dists["lame"].choices == (0.99, 1.0)
    assert dists["epochs"].step == 2
    cfg = sweep.trial_config({"rank": 7, "lamb": 0.9, "lame": 1.0, "lr": 2e-3, "epochs": 3}, "t1")
    assert (cfg.method.config.rank, cfg.method.config.lamb, cfg.method.config.lame, cfg.train.lr, cfg.train.epochs) == (7, 0.9, 1.0, 2e-3, 3)
    assert Path(cfg.output_dir) == sweep.dir / "trials" / "t1"
    assert cfg.resources.executor == "local" and cfg.resources.cpus_per_stage == 1.0
    assert sweep.space.describe()["lr"] == "float [0.0001, 0.01] log"


def test_rank_limit_is_the_embedding_dimension(tmp_path, weights_path):
    sweep = _sweep(tmp_path, weights_path)
    assert embedding_dim(sweep.base) == 32
    with pytest.raises(ConfigError, match=r"sweep.space.rank.high = 64 is outside the allowed values \[1, 32\]"):
        _sweep(tmp_path, weights_path, {"space": {"rank": {"low": 1, "high": 64}}})


def test_embedding_dimension_without_override_builds_the_backbone(tmp_path, weights_path):
    overrides = {"img_size": 8, "patch_size": 4, "in_chans": 1, "depth": 1, "num_heads": 2}  # no embed_dim
    data = tiny_sweep_dict(tmp_path, weights_path)
    data["backbone"] = {"name": "vit_tiny_patch16_224", "pretrained": False, "overrides": overrides}
    from pipeline.config import config_from_dict

    data.pop("sweep")
    assert embedding_dim(config_from_dict(data)) == 192  # vit_tiny's width


@pytest.mark.parametrize(
    "space, message",
    [
        ({"rnak": {"low": 1, "high": 4}}, r"sweep.space: unknown parameter\(s\) rnak for method 'inflora'; known: .*rank \(method.inflora.rank"),
        ({"rank": {"low": 4, "high": 4}}, r"sweep.space.rank: empty range \[4, 4\]"),
        ({"lamb": {"low": 0.99, "high": 0.9}}, r"sweep.space.lamb: empty range \[0.99, 0.9\]"),
        ({"lamb": {"low": 0.8, "high": 1.2}}, r"sweep.space.lamb.high = 1.2 is outside the allowed values \(0.0, 1.0\]"),
        ({"lamb": {"low": 0.0, "high": 0.9}}, r"sweep.space.lamb.low = 0.0 is outside"),
        ({"rank": {"low": 0, "high": 4}}, r"sweep.space.rank.low = 0 is outside the allowed values \[1, 32\]"),
        ({"rank": {"low": 1.5, "high": 4}}, "sweep.space.rank.low must be an integer"),
        ({"lr": {"low": 0, "high": 0.1, "log": True}}, r"sweep.space.lr.low = 0.0 is outside"),
        ({"epochs": {"low": 1}}, "sweep.space.epochs needs low and high"),
        ({"rank": {"low": 1, "high": 4, "scale": "log"}}, r"sweep.space.rank: unknown key\(s\) \['scale'\]"),
        ({"rank": {"values": []}}, "sweep.space.rank.values must be a non-empty list"),
        ({"rank": {"values": [4, 64]}}, r"sweep.space.rank.values\[1\] = 64 is outside"),
        ({"rank": {"values": [4], "low": 1}}, "give either values or low/high"),
        ({"rank": {"low": 1, "high": 8, "log": "yes"}}, "sweep.space.rank.log must be true or false"),
        ({"lr": {"low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}}, "log scale and step cannot be combined"),
        ({}, "sweep.space must map parameter names to ranges"),
        ({"rank": [1, 8]}, r"sweep.space.rank must be a range"),
    ],
)
def test_bad_spaces_name_the_key(tmp_path, weights_path, space, message):
    with pytest.raises(ConfigError, match=message):
        _sweep(tmp_path, weights_path, {"space": space})


@pytest.mark.parametrize(
    "sweep, sections, message",
    [
        ({"nmae": "x"}, {}, r"unknown config key\(s\) sweep.nmae"),
        ({"num_samples": 0}, {}, "sweep.num_samples must be >= 1"),
        ({"max_concurrent": 0}, {}, "sweep.max_concurrent must be >= 1"),
        ({"sampler": {"name": "annealing"}}, {}, "sweep.sampler.name must be one of"),
        ({"sampler": {"name": "tpe", "options": {"n_startup": 3}}}, {}, "sweep.sampler.options"),
        ({"scheduler": {"name": "hyperband"}}, {}, "sweep.scheduler.name must be one of"),
        ({"scheduler": {"name": "asha", "reduction_factor": 1}}, {}, "sweep.scheduler.reduction_factor must be > 1"),
        ({"resources_per_trial": {"cpu": 0}}, {}, "sweep.resources_per_trial.cpu must be > 0"),
        ({"resources_per_trial": {"gpu": 1.5}}, {}, "sweep.resources_per_trial.gpu must be a whole number when above 1"),
        ({"seeds": [1, 1]}, {}, "sweep.seeds must list distinct seeds"),
        ({"dir": "s3://bucket/sweeps"}, {}, "sweep.dir must be a filesystem path"),
        ({"enqueue": [{"rank": 3}]}, {}, r"sweep.enqueue\[0\] must give exactly the swept parameters"),
        ({"enqueue": [{"rank": 30, "lamb": 0.9}]}, {}, r"sweep.enqueue\[0\].rank = 30 is outside the space"),
        ({}, {"data": {"val_fraction": 0.0}}, "data.val_fraction must be > 0 for a sweep"),
        ({}, {"method": {"name": "seq_lora"}}, r"unknown parameter\(s\) lamb for method 'seq_lora'"),
    ],
)
def test_bad_sweep_sections_name_the_key(tmp_path, weights_path, sweep, sections, message):
    with pytest.raises(ConfigError, match=message):
        _sweep(tmp_path, weights_path, sweep, **sections)


def test_missing_sweep_section_and_base(tmp_path, weights_path):
    data = tiny_sweep_dict(tmp_path, weights_path)
    data.pop("sweep")
    with pytest.raises(ConfigError, match="a sweep file needs a sweep: section"):
        sweep_from_dict(data)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "nope.yaml", "sweep": {"space": {"rank": {"low": 1, "high": 2}}}}))
    with pytest.raises(ConfigError, match="base: run config not found"):
        load_sweep(path)


def test_sweep_file_merges_over_its_base_and_takes_overrides(tmp_path, weights_path):
    data = tiny_sweep_dict(tmp_path, weights_path)
    section = data.pop("sweep")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "train": {"epochs": 2}, "sweep": section}))
    sweep = load_sweep(tmp_path / "s.yaml", ["sweep.num_samples=7", "train.lr=0.05"])
    assert (sweep.base.train.epochs, sweep.base.train.lr, sweep.base.train.batch_size) == (2, 0.05, 64)
    assert sweep.config.num_samples == 7
    # the resolved sweep (what sweep.yaml in its directory holds) loads to the same sweep
    (tmp_path / "resolved.yaml").write_text(yaml.safe_dump(sweep.to_dict()))
    again = load_sweep(tmp_path / "resolved.yaml")
    assert again.base == sweep.base and again.config == sweep.config and again.space == sweep.space


def test_space_rejects_points_outside_it(tmp_path, weights_path):
    sweep = _sweep(tmp_path, weights_path)
    assert isinstance(sweep.space, SearchSpace)
    sweep.space.check_point({"rank": 2, "lamb": 0.9}, "p")
    with pytest.raises(ConfigError, match=r"p.lamb = 0.5 is outside the space: float \[0.8, 0.999\]"):
        sweep.space.check_point({"rank": 2, "lamb": 0.5}, "p")


@pytest.mark.parametrize("method", ["frozen", "l2p"])
def test_methods_without_lora_offer_no_rank(tmp_path, weights_path, method):
    from sweeps.space import parameters_for

    data = tiny_sweep_dict(tmp_path, weights_path)
    data.pop("sweep")
    data["method"] = {"name": method}
    from pipeline.config import config_from_dict

    params = parameters_for(config_from_dict(data))
    assert "rank" not in params and {"lr", "epochs"} <= set(params)
    with pytest.raises(ConfigError, match=rf"unknown parameter\(s\) rank for method '{method}'"):
        _sweep(tmp_path, weights_path, {"space": {"rank": {"low": 1, "high": 4}}}, method={"name": method})


def test_the_rank_range_is_declared_once_by_the_lora_settings(tmp_path, weights_path):
    from sweeps.space import parameters_for

    sweep = _sweep(tmp_path, weights_path)
    rank = parameters_for(sweep.base)["rank"]
    assert rank.key == "method.inflora.rank" and (rank.search.low, rank.search.high) == (1, 32)  # ge=1 of the field, the width 32
