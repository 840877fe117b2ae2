"""SD-LoRA against its definition (official ``backbone/lora.py``, ``_LoRA_qkv_timm_train``)."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from model import TrainSpec, create_method
from model.methods.memory_context import InMemoryContext
from model.methods.sd_lora import SDLoRAConfig, SDLoRAViT
from method_fixtures import task_batches
from method_fixtures import tiny_backbone as backbone


def run_sessions(n: int, epochs: int = 2):
    method = create_method("sd_lora", SDLoRAConfig(rank=2))
    data = [task_batches(s, 2 * s) for s in range(n)]
    ctx = InMemoryContext(method, backbone(), data, [2] * n, TrainSpec(optimizer="sgd", scheduler="constant", lr=0.05, epochs=epochs))
    for s in range(n):
        ctx.run(s, "train")
    return method, ctx


def test_forward_is_the_official_sum_of_normalised_old_branches_and_the_plain_current_one():
    method, ctx = run_sessions(3, epochs=1)
    net = ctx.build_net(3)
    assert isinstance(net, SDLoRAViT)
    layer = net.lora_layers["blocks.0.attn.qkv"]
    x = torch.randn(2, 5, 16)
    d = layer.attn_dim
    expected = layer.base_layer(x).clone()
    for name, branch in layer.branches.items():
        alpha = net.magnitudes[name]
        for t, rows in (("q", slice(0, d)), ("v", slice(2 * d, 3 * d))):
            A, B = branch.down(t), branch.up(t)
            out = x @ A.T @ B.T
            if name != "task_002":  # old branches: direction / (‖B‖_F ‖A‖_F)
                out = out / (torch.linalg.matrix_norm(B) * torch.linalg.matrix_norm(A))
            expected[..., rows] += alpha * out
    with torch.no_grad():
        assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    # k rows are never adapted
    assert_close(layer(x)[..., d : 2 * d], layer.base_layer(x)[..., d : 2 * d])


def test_frozen_directions_stay_bit_identical_while_their_magnitudes_move():
    method, ctx = run_sessions(3)
    first = ctx.load("adapter", 0)
    later = ctx.build_net(3)
    for key, value in first.items():
        if key.startswith("lora.") and "task_000" in key:
            layer, _, pname = key[len("lora."):].rsplit(".", 2)
            branch = later.lora_layers[layer].branches["task_000"]
            assert torch.equal(getattr(branch, pname).detach(), value), key
    m0_after_0 = float(ctx.load("adapter", 0)["magnitude.task_000"])
    m0_after_2 = float(ctx.load("adapter", 2)["magnitude.task_000"])
    init = float(torch.tensor(0.8))
    assert m0_after_0 != init and m0_after_2 != init and m0_after_2 != m0_after_0


def test_each_task_trains_its_new_factors_every_magnitude_and_its_head_only():
    method, ctx = run_sessions(1, epochs=1)
    ctx.session, ctx.tasks = 1, [1]
    ctx.train_data.append(task_batches(1, 2))
    ctx.classes.append(2)
    net = ctx.build_net(1)
    params = method.begin_session(net, ctx)
    names = {id(p): n for n, p in net.named_parameters()}
    trained = sorted(names[id(p)] for p in params)
    assert all(".task_001." in n or n.startswith("magnitudes.") or n.startswith("heads.heads.task_001") for n in trained), trained
    assert {n for n in trained if n.startswith("magnitudes.")} == {"magnitudes.task_000", "magnitudes.task_001"}
    assert {p for p in net.parameters() if p.requires_grad} == set(params)
    # the official code restarts every magnitude at 0.8 for the new task
    assert all(torch.equal(p.detach(), torch.tensor(0.8)) for p in net.magnitudes.values())


def test_frozen_weight_cache_follows_a_moving_magnitude():
    method, ctx = run_sessions(2, epochs=1)
    net = ctx.build_net(2)
    layer = net.lora_layers["blocks.1.attn.qkv"]
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        before = layer(x)  # builds the cached folded weight
        net.magnitudes["task_000"].add_(0.5)  # what an optimizer step does in place
        after = layer(x)
    branch = layer.branches["task_000"]
    d = layer.attn_dim
    A, B = branch.down("q"), branch.up("q")
    change = 0.5 * (x @ A.T @ B.T) / (torch.linalg.matrix_norm(B) * torch.linalg.matrix_norm(A))
    assert_close(after[..., :d] - before[..., :d], change, rtol=1e-4, atol=1e-6)


def test_heads_are_the_official_simple_linear_init():
    method = create_method("sd_lora", SDLoRAConfig(rank=2))
    ctx = InMemoryContext(method, backbone(), [task_batches(0, 0)], [2], TrainSpec(epochs=1))
    net = ctx.build_net(0)
    method.begin_session(net, ctx)
    head = net.heads.heads["task_000"]
    expected = torch.empty(2, 16)
    torch.nn.init.kaiming_uniform_(expected, nonlinearity="linear", generator=ctx.generator("heads"))
    assert torch.equal(head.weight.detach(), expected) and torch.equal(head.bias.detach(), torch.zeros(2))
    assert head.weight.abs().max() <= (3 / 16) ** 0.5  # U(±√(3/d))
