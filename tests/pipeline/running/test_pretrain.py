"""The CPU backbone is pretrained once per recipe and user, then copied from the cache.

Run from another directory, the demo's relative ``backbone.checkpoint`` is missing
again: it must come from ``~/.cache/inflora`` (here ``INFLORA_CACHE_DIR``), not from
minutes of pretraining, and the command must say which of the two happened.
"""

from __future__ import annotations

import pytest
from conftest import TINY_OVERRIDES

import pipeline.running.pretrain as pretrain
from pipeline.config import BackboneConfig, DataConfig, PretrainConfig

DATA = DataConfig(name="digits", image_size=8)


def _backbone(checkpoint, epochs: int = 1) -> BackboneConfig:
    recipe = PretrainConfig(dataset="mnist", epochs=epochs, lr=3e-3, batch_size=256, seed=0)
    return BackboneConfig(name="vit_tiny_patch16_224", pretrained=False, checkpoint=str(checkpoint), overrides=dict(TINY_OVERRIDES), pretrain=recipe)


def test_pretrained_once_then_copied_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFLORA_CACHE_DIR", str(tmp_path / "cache"))
    said: list[str] = []
    first = tmp_path / "one" / "checkpoints" / "tiny.safetensors"
    pretrain.ensure_backbone(_backbone(first), DATA, progress=False, notify=said.append)
    assert said[0].startswith(f"backbone: {first} is missing; pretraining it on mnist for 1 epochs")
    assert f"kept in {tmp_path / 'cache' / 'backbones'}" in said[0] and "cached as" in said[1]

    def no_pretraining(*args, **kwargs):
        raise AssertionError("pretrained again")

    monkeypatch.setattr(pretrain, "pretrain_classifier", no_pretraining)
    second = tmp_path / "two" / "checkpoints" / "tiny.safetensors"  # the same config, run from another directory
    pretrain.ensure_backbone(_backbone(second), DATA, progress=False, notify=said.append)
    assert second.read_bytes() == first.read_bytes()
    assert said[2].startswith(f"backbone: {second} copied from the cache {tmp_path / 'cache' / 'backbones'}")
    assert second.with_suffix(".json").is_file()  # the pretraining report travels with it
    with pytest.raises(AssertionError, match="pretrained again"):  # another recipe is another backbone
        pretrain.ensure_backbone(_backbone(tmp_path / "three.safetensors", epochs=2), DATA, progress=False)


def test_the_cache_honours_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("INFLORA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert pretrain.cache_dir() == tmp_path / "inflora"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pretrain.cache_dir() == tmp_path / "home" / ".cache" / "inflora"
