"""CL-LoRA against its definition (official ``models/cllora.py``, ``backbone/vit_cllora.py``,
``backbone/linears.py`` of JiangpengHe/CL-LoRA)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from method_fixtures import task_batches as shifted_batches
from method_fixtures import tiny_backbone

from model import TrainSpec, create_method
from model.methods.cl_lora import (
    SHARED,
    CLLoRAConfig,
    CLLoRAViT,
    block_weight_orthogonality,
    kd_loss,
    reassigned_grad,
)
from model.methods.memory_context import InMemoryContext

CONFIG = CLLoRAConfig(rank=2, shared_blocks=[0, 1], specific_blocks=[2])


def backbone():
    return tiny_backbone(depth=3)


def task_batches(seed: int, offset: int, n: int = 64):
    return shifted_batches(seed, offset, n, shift=0.3)


def make_ctx(n: int, epochs: int = 2, config: CLLoRAConfig = CONFIG):
    method = create_method("cl_lora", config)
    data = [task_batches(s, 2 * s) for s in range(n)]
    return method, InMemoryContext(method, backbone(), data, [2] * n, TrainSpec(optimizer="sgd", lr=0.05, epochs=epochs, weight_decay=5e-4))


def run_sessions(n: int, epochs: int = 2):
    method, ctx = make_ctx(n, epochs)
    for s in range(n):
        for step in ("train", "prototypes", "eval"):
            ctx.run(s, step)
    return method, ctx


@pytest.fixture(scope="module")
def three():
    return run_sessions(3)


def merged_backbone(net: CLLoRAViT, task: str, shared: dict | None = None):
    """A plain timm copy whose qkv weights hold W + the adapters by hand: shared ``up·down`` in
    the shared blocks, ``w[target, column] · up·down`` of ``task`` in the specific ones."""
    plain = backbone()
    d = 16
    rows = {"q": slice(0, d), "k": slice(d, 2 * d), "v": slice(2 * d, 3 * d)}
    with torch.no_grad():
        for b in net.shared_blocks:
            branch = (shared or {}).get(b, net.layer(b).branches[SHARED])
            for t in ("q", "v"):
                plain.blocks[b].attn.qkv.weight[rows[t]] += branch.up(t) @ branch.down(t)
        for col, b in enumerate(net.specific_blocks):
            branch = net.specific[task][str(b)]
            w = net.block_weights[task]
            for i, t in enumerate(("q", "k", "v")):
                if t in ("q", "v"):
                    plain.blocks[b].attn.qkv.weight[rows[t]] += w[i, col] * branch.up(t) @ branch.down(t)
    return plain


def test_forward_is_the_plain_model_with_the_adapters_merged_by_hand(three):
    _, ctx = three
    net = ctx.build_net(3)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        for t in range(3):
            task = f"task_{t:03d}"
            assert_close(net.task_features(x, task), merged_backbone(net, task)(x), rtol=1e-5, atol=1e-5)


def test_prediction_is_the_cosine_to_each_task_means_with_that_task_features(three):
    _, ctx = three
    net = ctx.build_net(3)
    x = torch.cat([b for b, _ in task_batches(5, 0)])
    with torch.no_grad():
        logits = []
        for t in range(3):
            f = F.normalize(merged_backbone(net, f"task_{t:03d}")(x), dim=1)
            logits.append(f @ F.normalize(net.prototypes[f"task_{t:03d}"], dim=1).T)  # σ = 1
        assert_close(net(x), torch.cat(logits, dim=1), rtol=1e-5, atol=1e-5)


def test_prototypes_are_class_means_of_the_task_features_when_it_was_learned(three):
    _, ctx = three
    then = ctx.build_net(2)  # after task 1: shared adapters as they stood then
    now = ctx.build_net(3)
    images = torch.cat([x for x, _ in task_batches(1, 2)])
    labels = torch.cat([y for _, y in task_batches(1, 2)])
    with torch.no_grad():
        f = then.task_features(images, "task_001")
    for c in range(2):
        assert_close(now.prototypes["task_001"][c], f[labels == 2 + c].mean(0), rtol=1e-5, atol=1e-5)


def test_shared_downs_are_orthonormal_frozen_and_old_specific_parts_bit_identical(three):
    _, ctx = three
    first, last = ctx.load("adapter", 0), ctx.load("adapter", 2)
    for key, value in first.items():
        if ".shared.down_" in key:
            assert torch.equal(last[key], value), key  # drawn once, never trained
            assert_close(value @ value.T, torch.eye(2), rtol=0, atol=1e-5)
        if ".shared.up_" in key:
            assert not torch.equal(last[key], value), key  # trained in every task
    net = ctx.build_net(3)
    for key, value in first.items():
        if key.startswith("lora.") and ".task_000." in key:
            layer, _, pname = key[len("lora."):].rsplit(".", 2)
            assert torch.equal(getattr(net.specific["task_000"][layer.split(".")[1]], pname).detach(), value), key
    assert torch.equal(net.block_weights["task_000"].detach(), first["block_weight.task_000"])
    ours = dict(net.backbone.named_parameters())
    for name, p in backbone().named_parameters():
        assert torch.equal(p, ours[name.replace("qkv.", "qkv.base_layer.")]), name


@pytest.mark.parametrize("session", [0, 1])
def test_each_task_trains_shared_ups_its_specific_adapters_block_weights_and_cosine_head(three, session):
    method, ctx = three
    ctx.session, ctx.tasks = session, [session]
    net = ctx.build_net(session)
    params = method.begin_session(net, ctx)
    task = f"task_{session:03d}"
    expected = {f"backbone.blocks.{b}.attn.qkv.branches.{SHARED}.up_{t}" for b in (0, 1) for t in ("q", "v")}
    expected |= {f"specific.{task}.2.{w}_{t}" for w in ("down", "up") for t in ("q", "v")}
    expected |= {f"block_weights.{task}", f"heads.heads.{task}.weight", f"heads.heads.{task}.sigma"}
    every = dict(net.named_parameters(remove_duplicate=False))
    assert {id(p) for p in params} == {id(every[n]) for n in expected} and len(params) == len(expected)
    assert {id(p) for p in net.parameters() if p.requires_grad} == {id(p) for p in params}
    w = net.block_weights[task]
    assert w.shape == (3, 1) and float(w.detach().min()) >= 0.5 and float(w.detach().max()) <= 1.5
    assert bool(net.teacher) == (session > 0)


def test_the_distillation_step_reassigns_the_kd_gradient_of_the_shared_ups(three):
    """One plain-SGD KD step: Δup = −lr · reassign(∂KD/∂up), by hand from ``forward_general_cls``."""
    method, ctx = three
    ctx.session, ctx.tasks = 1, [1]
    net = ctx.build_net(1)
    params = method.begin_session(net, ctx)
    hooks = method.training_hooks(net, ctx)
    images = task_batches(1, 2)[0][0]
    head = net.heads.heads["task_001"]
    teacher_branches = {b: net.teacher[str(b)] for b in net.shared_blocks}

    def shared_cls(shared):
        plain = merged_backbone(net, "task_001", shared)
        h = plain.norm_pre(plain.patch_drop(plain._pos_embed(plain.patch_embed(images))))
        for b in net.shared_blocks:
            h = plain.blocks[b](h)
        return plain.norm(h)[:, 0]

    ups = {b: {t: net.layer(b).branches[SHARED].up(t).detach().clone().requires_grad_(True) for t in ("q", "v")} for b in net.shared_blocks}

    # by hand: the shared ups as autograd leaves of a hand-written forward
    student = head(shared_cls_differentiable(net, images, ups))
    with torch.no_grad():
        teacher_feat = shared_cls(teacher_branches)
    teacher = head(teacher_feat)
    loss = 5.0 * kd_loss(student, teacher, 2.0)
    grads = torch.autograd.grad(loss, [ups[b][t] for b in ups for t in ("q", "v")])
    before = {b: {t: ups[b][t].detach().clone() for t in ("q", "v")} for b in ups}
    optimizer = torch.optim.SGD(params, lr=0.1)
    hooks.before_batch(net, images, None, optimizer)
    i = 0
    for b in net.shared_blocks:
        for t in ("q", "v"):
            want = before[b][t] - 0.1 * reassigned_grad(grads[i], teacher_branches[b].up(t).detach())
            assert_close(net.layer(b).branches[SHARED].up(t).detach(), want, rtol=1e-4, atol=1e-7)
            i += 1
    assert all(p.grad is None for p in params)


def shared_cls_differentiable(net: CLLoRAViT, images: torch.Tensor, ups: dict) -> torch.Tensor:
    """``forward_general_cls`` of the student with the shared ups as autograd leaves (timm blocks, weights merged)."""
    plain = copy.deepcopy(net.backbone)
    d = 16
    h = plain.norm_pre(plain.patch_drop(plain._pos_embed(plain.patch_embed(images))))
    for b in net.shared_blocks:
        layer = net.layer(b)
        weight = layer.base_layer.weight.detach().clone()
        pieces = [weight[:d], weight[d : 2 * d], weight[2 * d :]]
        branch = layer.branches[SHARED]
        pieces[0] = pieces[0] + ups[b]["q"] @ branch.down("q").detach()
        pieces[2] = pieces[2] + ups[b]["v"] @ branch.down("v").detach()
        merged = torch.cat(pieces)
        block = plain.blocks[b]
        attn = block.attn
        x = block.norm1(h)
        B, N, C = x.shape
        qkv = F.linear(x, merged, layer.base_layer.bias).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = (q * attn.scale) @ k.transpose(-2, -1)
        out = (a.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C)
        h = h + block.ls1(attn.proj(out))
        h = h + block.ls2(block.mlp(block.norm2(h)))
    return plain.norm(h)[:, 0]


def test_reassigned_gradient_scales_rows_by_normalised_old_row_norms():
    g = torch.Generator().manual_seed(0)
    grad, old = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    norms = torch.tensor([float(torch.norm(old[i])) for i in range(6)])
    weights = 6 * norms / norms.sum()
    want = torch.stack([weights[i] * grad[i] for i in range(6)])
    assert_close(reassigned_grad(grad, old), want)


def _official_orthogonality(previous_weights_list, current_weights, epsilon=1e-8):
    total = 0.0
    cur = current_weights.flatten() / (torch.norm(current_weights.flatten()) + epsilon)
    for prev in previous_weights_list:
        p = prev.flatten() / (torch.norm(prev.flatten()) + epsilon)
        total += torch.abs(torch.sum(p * cur))
    return total / len(previous_weights_list)


def test_block_weight_orthogonality_and_kd_match_the_official_functions():
    g = torch.Generator().manual_seed(1)
    old = [torch.rand(3, 6, generator=g) for _ in range(3)]
    cur = torch.rand(3, 6, generator=g)
    assert_close(block_weight_orthogonality(old, cur), _official_orthogonality(old, cur))
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    official = -1 * torch.mul(torch.softmax(t / 2, dim=1), torch.log_softmax(s / 2, dim=1)).sum() / 5
    assert_close(kd_loss(s, t, 2.0), official)


@pytest.mark.parametrize("bad", [{"specific_blocks": [1], "shared_blocks": [0, 1]}, {"specific_blocks": []},
                                 {"targets": ["x"]}, {"kd_temperature": 0.0}, {"kd_weight": -1.0}])
def test_bad_settings_name_their_key(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        CLLoRAConfig(**bad)
