"""The LoRA wrapper and the continual ViT, checked against definitions on a tiny timm ViT."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from model import REFERENCE_DOWN_SCALE, ContinualViT, InfLoRAQKV, create_backbone
from model.net import resolve_lora_blocks

OVERRIDES = {"img_size": 8, "patch_size": 4, "in_chans": 1, "embed_dim": 16, "depth": 3, "num_heads": 2}


def tiny_net(blocks="all") -> ContinualViT:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ContinualViT(create_backbone("vit_tiny_patch16_224", overrides=OVERRIDES), blocks)


def orthonormal_rows(r: int, d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, r, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()


def test_scale_constant_is_reference_value():
    assert REFERENCE_DOWN_SCALE == pytest.approx(3 ** -0.5)


def test_wrapper_without_branches_equals_base_layer():
    base = nn.Linear(16, 48)
    layer = InfLoRAQKV(base)
    x = torch.randn(2, 5, 16)
    assert_close(layer(x), base(x))


def test_branch_changes_only_k_and_v_rows():
    base = nn.Linear(16, 48)
    layer = InfLoRAQKV(base)
    branch = layer.add_branch("task_000", orthonormal_rows(3, 16, 0))
    x = torch.randn(2, 5, 16)
    assert_close(layer(x), base(x))  # zero-initialised up: no change yet
    with torch.no_grad():
        branch.up_k.normal_()
        branch.up_v.normal_()
    out, ref = layer(x), base(x)
    assert_close(out[..., :16], ref[..., :16])  # q untouched
    assert_close(out[..., 16:32], ref[..., 16:32] + x @ branch.down.T @ branch.up_k.T)
    assert_close(out[..., 32:], ref[..., 32:] + x @ branch.down.T @ branch.up_v.T)


def test_many_branches_sum_their_deltas():
    base = nn.Linear(8, 24)
    layer = InfLoRAQKV(base)
    branches = [layer.add_branch(f"task_{i:03d}", orthonormal_rows(2, 8, i)) for i in range(3)]
    for b in branches:
        with torch.no_grad():
            b.up_k.normal_()
            b.up_v.normal_()
    x = torch.randn(4, 8)
    expected_k = sum(x @ b.down.T @ b.up_k.T for b in branches)
    expected_v = sum(x @ b.down.T @ b.up_v.T for b in branches)
    out = layer(x)
    assert_close(out[:, 8:16], base(x)[:, 8:16] + expected_k)
    assert_close(out[:, 16:], base(x)[:, 16:] + expected_v)


def test_covariance_is_mean_outer_product_over_tokens():
    layer = InfLoRAQKV(nn.Linear(6, 18))
    xs = [torch.randn(3, 4, 6), torch.randn(2, 4, 6)]
    layer.collect_covariance = True
    for x in xs:
        layer(x)
    tokens = torch.cat([x.reshape(-1, 6) for x in xs]).double()
    assert_close(layer.covariance(), tokens.T @ tokens / tokens.shape[0])
    assert layer.cov_sum.dtype == torch.float64


def test_wrapping_swaps_qkv_of_chosen_blocks_only():
    net = tiny_net(blocks=2)
    blocks = net.backbone.blocks
    assert isinstance(blocks[0].attn.qkv, InfLoRAQKV) and isinstance(blocks[1].attn.qkv, InfLoRAQKV)
    assert isinstance(blocks[2].attn.qkv, nn.Linear)
    assert list(net.lora_layers) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert resolve_lora_blocks(12, 5) == [0, 1, 2, 3, 4]
    assert resolve_lora_blocks(4, "all") == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="lora blocks"):
        resolve_lora_blocks(4, 9)


def test_wrapped_net_without_branches_matches_backbone():
    net = tiny_net()
    plain = create_backbone("vit_tiny_patch16_224", overrides=OVERRIDES)
    plain.load_state_dict({k.replace(".base_layer", ""): v for k, v in net.backbone.state_dict().items()})
    x = torch.randn(3, 1, 8, 8)
    assert_close(net.features(x), plain(x))


def test_adapter_state_round_trip_holds_no_backbone_weights():
    net = tiny_net()
    downs = {name: orthonormal_rows(2, 16, i) * REFERENCE_DOWN_SCALE for i, name in enumerate(net.lora_layers)}
    net.add_branches("task_000", downs)
    params = net.set_branch_trainable("task_000")
    net.heads.add("task_000", 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in params:
            p.normal_()
    state = net.adapter_state(["task_000"], ["task_000"])
    assert all(k.startswith(("lora.", "head.")) for k in state)
    assert not any("base_layer" in k or "patch_embed" in k for k in state)
    restored = tiny_net()
    restored.load_adapter_state(state)
    x = torch.randn(2, 1, 8, 8)
    assert_close(restored(x), net(x))


def test_only_current_branch_and_head_train(tiny_method_net):
    net, params = tiny_method_net
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params}
    layer = next(iter(net.lora_layers.values()))
    assert not layer.branches["task_000"].up_k.requires_grad
    assert layer.branches["task_001"].up_k.requires_grad
    assert not layer.branches["task_001"].down.requires_grad
    assert not net.heads.heads["task_000"].weight.requires_grad
    assert net.heads.heads["task_001"].weight.requires_grad


@pytest.fixture
def tiny_method_net():
    from model import TrainSpec, create_method
    from model.methods.inflora import InfLoRAConfig
    from model.methods.memory_context import InMemoryContext

    net = tiny_net()
    method = create_method("inflora", InfLoRAConfig(rank=2))
    ctx = InMemoryContext(method, net.backbone, [[], []], [2, 2], TrainSpec())
    downs = {name: orthonormal_rows(2, 16, i) for i, name in enumerate(net.lora_layers)}
    for session in (0, 1):
        ctx.session, ctx.tasks = session, [session]
        ctx.save("design", downs)
        params = method.begin_session(net, ctx)
    return net, params


def reference_output(layer: InfLoRAQKV, x: torch.Tensor) -> torch.Tensor:
    """The definition: base output plus every branch's up(down x) on the k and v rows."""
    out = layer.base_layer(x).clone()
    d = layer.attn_dim
    for branch in layer.branches.values():
        out[..., d : 2 * d] = out[..., d : 2 * d] + x @ branch.down.T @ branch.up_k.T
        out[..., 2 * d :] = out[..., 2 * d :] + x @ branch.down.T @ branch.up_v.T
    return out


def test_cached_frozen_weight_follows_every_change():
    layer = InfLoRAQKV(nn.Linear(8, 24))
    frozen = [layer.add_branch(f"task_{i:03d}", orthonormal_rows(2, 8, i)) for i in range(2)]
    x = torch.randn(3, 8)
    for b in frozen:
        with torch.no_grad():
            b.up_k.normal_()
            b.up_v.normal_()
    assert_close(layer(x), reference_output(layer, x))
    cached = layer._frozen_cache[1]
    assert_close(layer(x), reference_output(layer, x))
    assert layer._frozen_cache[1] is cached  # reused while nothing changed
    with torch.no_grad():
        frozen[0].up_v.mul_(3)  # in-place change
    assert_close(layer(x), reference_output(layer, x))
    frozen[1].load_state_dict({k: torch.randn_like(v) for k, v in frozen[1].state_dict().items()})
    assert_close(layer(x), reference_output(layer, x))
    with torch.no_grad():
        frozen[0].up_k.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN"):
        layer(x)


def test_gradients_reach_only_the_trainable_branch_and_match_the_definition():
    layer = InfLoRAQKV(nn.Linear(8, 24))
    layer.requires_grad_(False)
    old = layer.add_branch("task_000", orthonormal_rows(2, 8, 0))
    with torch.no_grad():
        old.up_k.normal_()
        old.up_v.normal_()
    new = layer.add_branch("task_001", orthonormal_rows(2, 8, 1))
    new.set_trainable(True)
    with torch.no_grad():
        new.up_k.normal_()
    x = torch.randn(5, 8)
    layer(x).pow(2).sum().backward()
    merged_grad = new.up_k.grad.clone()
    new.up_k.grad = None
    reference_output(layer, x).pow(2).sum().backward()
    assert_close(merged_grad, new.up_k.grad)
    assert old.up_k.grad is None and old.down.grad is None and layer.base_layer.weight.grad is None


def test_heads_follow_the_network_device():
    net = tiny_net()
    net.heads.add("task_000", 2, generator=torch.Generator().manual_seed(0))
    net.to("meta")
    second = net.heads.add("task_001", 2, generator=torch.Generator().manual_seed(0))
    assert second.weight.device.type == "meta" and net.heads.heads["task_000"].weight.device.type == "meta"
