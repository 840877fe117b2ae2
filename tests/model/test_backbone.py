"""Backbone factory: timm names, local checkpoints, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from model.backbone import BackboneError, create_backbone, load_state_dict_file, replace_final_norm, save_backbone

OVERRIDES = {"img_size": 8, "patch_size": 4, "in_chans": 1, "embed_dim": 16, "depth": 1, "num_heads": 2}


def test_headless_frozen_eval_mode():
    model = create_backbone("vit_tiny_patch16_224", overrides=OVERRIDES)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 16)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_round_trip(tmp_path, suffix):
    model = create_backbone("vit_tiny_patch16_224", overrides=OVERRIDES)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_backbone(model, path)
    else:
        torch.save({"state_dict": model.state_dict()}, path)
    loaded = create_backbone("vit_tiny_patch16_224", checkpoint=path, overrides=OVERRIDES)
    x = torch.randn(2, 1, 8, 8)
    assert_close(loaded(x), model(x))


def test_unknown_name_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(BackboneError, match="unknown timm model 'vit_nonexistent_xyz'"):
        create_backbone("vit_nonexistent_xyz")
    with pytest.raises(BackboneError, match="backbone checkpoint not found: .*missing.safetensors"):
        create_backbone("vit_tiny_patch16_224", checkpoint=tmp_path / "missing.safetensors", overrides=OVERRIDES)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(BackboneError, match="corrupt or not a weights file"):
        create_backbone("vit_tiny_patch16_224", checkpoint=corrupt, overrides=OVERRIDES)
    truncated = tmp_path / "truncated.pth"
    torch.save(create_backbone("vit_tiny_patch16_224", overrides=OVERRIDES).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(BackboneError, match="corrupt"):
        load_state_dict_file(truncated)


def test_checkpoint_of_another_architecture_is_rejected(tmp_path):
    other = create_backbone("vit_tiny_patch16_224", overrides={**OVERRIDES, "embed_dim": 32})
    path = tmp_path / "other.safetensors"
    save_backbone(other, path)
    with pytest.raises(BackboneError, match="does not match the backbone|cannot load|size mismatch"):
        create_backbone("vit_tiny_patch16_224", checkpoint=path, overrides=OVERRIDES)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(BackboneError, match="corrupt or not a weights file"):
        load_state_dict_file(path)


def test_reset_final_norm_is_a_fresh_frozen_layernorm():
    """InfLoRA_CA1 on CIFAR-100: ``image_encoder.norm = nn.LayerNorm(768)`` after loading the weights."""
    torch.manual_seed(0)
    model = create_backbone("vit_tiny_patch16_224", overrides=OVERRIDES)
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 2.0)  # stands in for pretrained affine parameters
    x = torch.randn(2, OVERRIDES["in_chans"], OVERRIDES["img_size"], OVERRIDES["img_size"])
    tokens = model.forward_features(x)  # after model.norm
    pre_norm = model.blocks(model.norm_pre(model._pos_embed(model.patch_embed(x))))
    fresh = replace_final_norm(model)
    assert model.norm is fresh
    assert isinstance(fresh, torch.nn.LayerNorm) and fresh.eps == 1e-5
    assert torch.equal(fresh.weight, torch.ones_like(fresh.weight)) and torch.equal(fresh.bias, torch.zeros_like(fresh.bias))
    cls = pre_norm[:, 0]
    expected = (cls - cls.mean(-1, keepdim=True)) / torch.sqrt(cls.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(model.forward_head(model.norm(pre_norm), pre_logits=True), expected)
    assert not torch.allclose(tokens[:, 0], expected)
    built = create_backbone("vit_tiny_patch16_224", overrides=OVERRIDES, reset_final_norm=True)
    assert built.norm.eps == 1e-5 and not any(p.requires_grad for p in built.norm.parameters())
