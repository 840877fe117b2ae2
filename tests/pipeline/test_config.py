"""Config validation: every bad key or value is rejected with a message naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import ConfigError, apply_overrides, config_from_dict, config_to_dict, load_config, updated
from process_helpers import heavy_imports_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"trian": {}}, r"unknown config key\(s\) trian in the top level"),
        ({"train": {"lrr": 1}}, r"unknown config key\(s\) train.lrr in section train"),
        ({"train": {"lr": -1}}, "train.lr must be > 0, got -1"),
        ({"train": {"optimizer": "rmsprop"}}, "train.optimizer must be one of"),
        ({"method": {"lamb": 0}}, "method.inflora.lamb must be > 0, got 0"),  # the flat shorthand names the full key
        ({"method": {"inflora": {"lamb": 1.2}}}, "method.inflora.lamb must be <= 1, got 1.2"),
        ({"method": {"lame": -0.1}}, "method.inflora.lame"),
        ({"method": {"lamb": 0.9, "lame": 0.5}}, r"method.inflora.lame must be >= lamb \(0.9\), got 0.5"),
        ({"method": {"name": "l2p", "top_k": 40}}, r"method.l2p: top_k \(40\) cannot exceed pool_size \(30\)"),
        ({"method": {"lamb": 0.9, "raank": 3}}, r"unknown config key\(s\) method.inflora.raank in section method.inflora; allowed: \['blocks'"),
        ({"method": {"name": "foo"}}, "method.name: unknown method 'foo'; known methods"),
        ({"data": {"name": "imagenet_x"}}, "data.name: unknown data set 'imagenet_x'"),
        ({"data": {"num_tasks": 0}}, "data.num_tasks must be >= 1"),
        ({"data": {"val_fraction": 1.0}}, "data.val_fraction"),
        ({"data": {"class_order": "random"}}, "data.class_order"),
        ({"method": {"inflora": {"rank": "ten"}}}, "method.inflora.rank must be an integer, got 'ten'"),
        ({"method": {"inflora": {"rank": 0}}}, "method.inflora.rank must be >= 1, got 0"),
        ({"method": {"sd_lora": {"blocks": "some"}}}, "method.sd_lora.blocks must be 'all', an int or a list of block indices"),
        ({"lora": {"rank": 4}}, "the lora section is gone: LoRA settings belong to the method; write method.inflora.rank instead of lora.rank"),
        ({"lora": {"rank": 4}, "method": {"name": "l2p"}}, "method 'l2p' has no LoRA settings; drop lora"),
        ({"method": {"name": "frozen", "rank": 4}}, r"unknown config key\(s\) method.frozen.rank"),
        ({"resources": {"executor": "slurm"}}, "resources.executor"),
        ({"resources": {"gpus_per_stage": -1}}, "resources.gpus_per_stage"),
        ({"seeds": []}, "seeds must list at least one seed"),
        ({"seed": 1, "seeds": [1]}, "either seed or seeds"),
        ({"backbone": {"pretrain": {"epochs": 3}}}, "backbone.pretrain needs backbone.checkpoint"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_an_unknown_timm_model_is_named_by_the_preflight_which_imports_timm():
    from pipeline.running.preflight import architecture

    cfg = config_from_dict({"backbone": {"name": "vit_nope"}})  # validation imports no timm
    with pytest.raises(ConfigError, match="backbone.name: unknown timm model 'vit_nope'"):
        architecture(cfg.backbone)


def test_defaults_are_the_paper_defaults():
    cfg = config_from_dict({})
    assert cfg.train.optimizer == "adam" and cfg.train.lr == 5e-4 and cfg.train.batch_size == 128
    assert cfg.method.config.rank == 10 and cfg.method.config.lamb == 0.95 and cfg.method.config.lame == 1.0
    assert cfg.backbone.name.startswith("vit_base_patch16_224")


def test_relative_paths_resolve_against_base_dir(tmp_path):
    cfg = config_from_dict({"output_dir": "runs", "backbone": {"checkpoint": "ckpt/w.safetensors"}}, base_dir=tmp_path)
    assert cfg.output_dir == str(tmp_path / "runs")
    assert cfg.backbone.checkpoint == str(tmp_path / "ckpt" / "w.safetensors")


def test_yaml_numbers_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 5e-4\nmethod:\n  lamb: 0.98\n")
    cfg = load_config(path, ["method.inflora.rank=4", "data.class_order=[1,0,2,3,4,5,6,7,8,9]"])
    assert cfg.train.lr == 5e-4 and cfg.method.config.rank == 4 and cfg.method.config.lamb == 0.98 and cfg.data.class_order[0] == 1
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["nonsense"])


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_result_key_ignores_seeds_paths_and_resources():
    a = config_from_dict({"seeds": [0], "output_dir": "/a", "resources": {"cpus_per_stage": 1}})
    b = config_from_dict({"seeds": [1, 2], "output_dir": "/b", "resources": {"cpus_per_stage": 2}})
    c = config_from_dict({"method": {"inflora": {"rank": 4}}})
    assert a.result_key() == b.result_key() != c.result_key()


def test_result_key_holds_only_the_selected_methods_settings():
    frozen = config_from_dict({"method": {"name": "frozen"}})
    assert frozen.result_key() == updated(frozen, {"method.inflora.rank": 4, "method.sd_lora.rank": 3}).result_key()
    assert frozen.result_key() == updated(frozen, {"tracking.enabled": False}).result_key()
    assert frozen.result_key() != updated(frozen, {"train.lr": 1e-3}).result_key()


def test_num_workers_keys_results_only_where_the_workers_draw_the_transforms():
    """PIL path: each loader worker draws the random transforms from its own seed, so 0, 2 and 4
    workers give three results; the device path seeds per batch, so it never depends on them."""
    pil = config_from_dict({})
    keys = {updated(pil, {"data.num_workers": n}).result_key() for n in (0, 2, 4)}
    assert len(keys) == 3 and pil.result_key() in keys
    device = updated(pil, {"data.pipeline": "device"})
    assert device.result_key() == updated(device, {"data.num_workers": 4}).result_key()


def test_updated_validates_once_and_names_the_key():
    cfg = config_from_dict({})
    new = updated(cfg, {"method.inflora.rank": 4, "method.name": "sd_lora", "method.sd_lora.rank": 3, "train.lr": 0.1})
    assert (new.method.name, new.method.config.rank, new.method.settings["inflora"].rank, new.train.lr) == ("sd_lora", 3, 4, 0.1)
    assert new.backbone is cfg.backbone  # untouched sections go in as they are
    with pytest.raises(ConfigError, match="method.inflora.rank must be >= 1, got 0"):
        updated(cfg, {"method.inflora.rank": 0})


def test_sections_hash_and_compare_by_their_canonical_json():
    a, b = config_from_dict({"data": {"num_tasks": 2}}), config_from_dict({"data": {"num_tasks": 2}})
    assert a.data == b.data and hash(a.data) == hash(b.data) and {a.data: 1}[b.data] == 1
    assert a.canonical_json == json.dumps(config_to_dict(a), sort_keys=True)


def test_round_trip_through_dict():
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg


def test_shipped_configs_parse():
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        if "sweep" in path.name:
            continue  # sweep files wrap a run config; tested in tests/sweeps
        load_config(path)


def test_every_shipped_config_validates_without_torch_timm_ray_or_mlflow():
    """Validation is the first thing ``inflora run`` does: a fresh interpreter validates every run
    config of ``configs/`` and ``configs/paper/`` without those imports (seconds each). (A sweep
    file whose space bounds a rank by the backbone's width builds the backbone on the meta device:
    timm.)"""
    code = (
        "from pathlib import Path\n"
        "from pipeline.config import load_config\n"
        f"paths = [p for p in sorted(Path({str(ROOT / 'configs')!r}).rglob('*.yaml')) if 'sweep' not in p.name]\n"
        "assert len(paths) > 30, paths\n"
        "for path in paths:\n"
        "    load_config(path)\n"
    )
    assert heavy_imports_of(code) == []


@pytest.mark.parametrize(
    ("available", "resources", "expected"),
    [
        ({"CPU": 2.0}, {"cpus_per_stage": 2}, 1),  # the demo: one 2-CPU stage at a time
        ({"CPU": 2.0}, {"cpus_per_stage": 1}, 2),
        ({"CPU": 3.0}, {"cpus_per_stage": 2}, 1),
        ({"CPU": 1.0}, {"cpus_per_stage": 4}, 1),  # never fewer than one
        ({"CPU": 64.0}, {"cpus_per_stage": 1}, 8),  # capped
        ({"CPU": 16.0, "GPU": 1.0}, {"cpus_per_stage": 2, "gpus_per_stage": 0.5}, 2),  # the GPU binds
        ({"CPU": 16.0}, {"cpus_per_stage": 2, "gpus_per_stage": 1}, 1),
    ],
)
def test_warm_workers_match_the_stages_that_fit_at_once(available, resources, expected):
    from pipeline.config import ResourcesConfig
    from pipeline.running.scheduler import concurrent_stages

    assert concurrent_stages(available, ResourcesConfig(**resources)) == expected
