"""LoRA⁻ against its definition (official ``methods/lorasub_drs.py``, ``models/vit_lora.py``,
``optimgrad/adam_proj.py``, ``utils/losses.py`` of scarlet0703/LoRA-Sub-DRS)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from method_fixtures import task_batches as shifted_batches
from method_fixtures import tiny_backbone

from model import TrainSpec, create_method
from model.lora import FactorBranch
from model.methods.lora_minus import LoRAMinusConfig, LoRAMinusViT, augmented_triplet_loss, drift_resistant_basis, official_init, projector
from model.methods.memory_context import InMemoryContext

def backbone():
    return tiny_backbone()


def task_batches(seed: int, offset: int, n: int = 64):
    return shifted_batches(seed, offset, n, shift=0.3)


def run_sessions(n: int, epochs: int = 2, **settings):
    method = create_method("lora_minus", LoRAMinusConfig(rank=2, **settings))
    data = [task_batches(s, 2 * s) for s in range(n)]
    ctx = InMemoryContext(method, backbone(), data, [2] * n, TrainSpec(lr=1e-2, epochs=epochs))
    for s in range(n):
        for step in ("design", "train", "prototypes", "eval"):
            ctx.run(s, step)
    return method, ctx


@pytest.fixture(scope="module")
def three():
    return run_sessions(3)


def test_forward_adds_every_task_product_on_k_and_v_rows(three):
    _, ctx = three
    net = ctx.build_net(3)
    layer = net.lora_layers["blocks.1.attn.qkv"]
    x = torch.randn(2, 5, 16)
    d = layer.attn_dim
    expected = layer.base_layer(x).clone()
    for branch in layer.branches.values():
        for t, rows in (("k", slice(d, 2 * d)), ("v", slice(2 * d, 3 * d))):
            expected[..., rows] += x @ branch.down(t).T @ branch.up(t).T
    with torch.no_grad():
        assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(layer(x)[..., :d], layer.base_layer(x)[..., :d])  # q rows never adapted


def test_official_init_kaiming_down_and_one_sparse_entry_per_up_column():
    branch = FactorBranch(64, 64, 3)
    official_init(branch, torch.Generator().manual_seed(0))
    for t in ("k", "v"):
        assert ((branch.up(t) != 0).sum(dim=0) == 1).all()
        bound = 1 / 64**0.5  # kaiming_uniform_(a=√5) on fan_in 64
        assert branch.down(t).abs().max() <= bound and branch.down(t).abs().max() > 0.5 * bound


def test_the_drift_resistant_space_is_built_on_the_subtracted_model(three):
    """Design of session 2 = top-energy eigenvectors of the qkv inputs of W₀ − Σ_{i<2} B_i A_i."""
    method, ctx = three
    net = ctx.build_net(2)
    subtracted = copy.deepcopy(net.backbone)
    inputs: dict[str, list[torch.Tensor]] = {}
    for name, layer in net.lora_layers.items():
        i = int(name.split(".")[1])
        plain = torch.nn.Linear(16, 48)
        with torch.no_grad():
            weight = layer.base_layer.weight.clone()
            d = layer.attn_dim
            for branch in layer.branches.values():
                weight[d : 2 * d] -= branch.up("k") @ branch.down("k")
                weight[2 * d :] -= branch.up("v") @ branch.down("v")
            plain.weight.copy_(weight)
            plain.bias.copy_(layer.base_layer.bias)
        plain.register_forward_hook(lambda _m, inp, _o, name=name: inputs.setdefault(name, []).append(inp[0].reshape(-1, 16)))
        subtracted.blocks[i].attn.qkv = plain
    with torch.no_grad():
        for images, _ in task_batches(2, 4):
            subtracted(images)
    design = ctx.load("design", 2)
    for name, xs in inputs.items():
        tokens = torch.cat(xs).double()
        cov = tokens.T @ tokens / len(tokens)
        values, vectors = torch.linalg.eigh(cov)
        share = values.flip(0).cumsum(0) / values.sum()
        k = int((share < method.config.threshold).sum()) + 1
        want = vectors.flip(1)[:, :k]
        assert design[name].shape == (16, k)
        assert_close(design[name].double() @ design[name].double().T, want @ want.T, rtol=0, atol=1e-5)
    # the subtraction matters: block 1's inputs without it span another space (block 0's are the same)
    from model.training import collect_covariances

    plain = collect_covariances(ctx.build_net(2), task_batches(2, 4), torch.device("cpu"))
    plain_basis = drift_resistant_basis(plain["blocks.1.attn.qkv"], method.config.threshold)
    ours = design["blocks.1.attn.qkv"].double()
    assert plain_basis.shape != ours.shape or not torch.allclose(plain_basis @ plain_basis.T, ours @ ours.T, atol=1e-4)


def test_projector_is_the_normalised_orthogonal_projection():
    basis, _ = torch.linalg.qr(torch.randn(10, 3, dtype=torch.float64))
    p = projector(basis)
    assert_close(p * 3**0.5 @ (p * 3**0.5), p * 3**0.5)  # √k·P is idempotent
    assert_close(torch.linalg.matrix_norm(p), torch.tensor(1.0, dtype=torch.float64))


def test_each_step_of_the_factors_lies_inside_the_drift_resistant_space(three):
    """Session 1's trained factors minus their (seeded) init: P̂Δ = Δ for ups, ΔP̂ = Δ for downs."""
    _, ctx = three
    trained = ctx.load("adapter", 1)
    ctx.session, ctx.tasks = 1, [1]
    init_net = ctx.build_net(1)
    init_net.add_factor_branches("task_001", ctx.generator("lora_init"))
    design = ctx.load("design", 1)
    moved = False
    for name, layer in init_net.lora_layers.items():
        u = design[name].double()
        p_hat = u @ u.T
        for t in ("k", "v"):
            d_up = trained[f"lora.{name}.task_001.up_{t}"].double() - layer.branches["task_001"].up(t).detach().double()
            d_down = trained[f"lora.{name}.task_001.down_{t}"].double() - layer.branches["task_001"].down(t).detach().double()
            assert_close(p_hat @ d_up, d_up, rtol=0, atol=1e-5)
            assert_close(d_down @ p_hat, d_down, rtol=0, atol=1e-5)
            moved |= bool(d_up.abs().max() > 1e-4) and bool(d_down.abs().max() > 1e-4)
    assert moved
    assert any(design[n].shape[1] < 16 for n in design)  # a proper subspace somewhere: the check has teeth


def test_task_zero_is_unconstrained_and_old_branches_and_backbone_stay_bit_identical(three):
    _, ctx = three
    assert ctx.load("design", 0) == {}
    first = ctx.load("adapter", 0)
    later = ctx.build_net(3)
    for key, value in first.items():
        if key.startswith("lora."):
            layer, branch, pname = key[len("lora."):].rsplit(".", 2)
            assert torch.equal(getattr(later.lora_layers[layer].branches[branch], pname).detach(), value), key
    fresh = backbone()
    ours = dict(later.backbone.named_parameters())
    for name, p in fresh.named_parameters():
        assert torch.equal(p, ours[name.replace("qkv.", "qkv.base_layer.")]), name


def test_each_task_trains_its_two_factors_per_target_and_its_head_only(three):
    method, ctx = three
    ctx.session, ctx.tasks = 1, [1]
    net = ctx.build_net(1)
    params = method.begin_session(net, ctx)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    expected = {f"backbone.blocks.{i}.attn.qkv.branches.task_001.{w}_{t}" for i in range(2) for w in ("down", "up") for t in ("k", "v")}
    expected |= {"heads.heads.task_001.weight", "heads.heads.task_001.bias"}
    assert trainable == expected and len(params) == len(expected)


def _official_atl(inputs, targets, center, margin):
    """The loop of ``AugmentedTripletLoss.forward``, transcribed."""
    n = inputs.size(0)
    dist = torch.pow(inputs, 2).sum(dim=1, keepdim=True).expand(n, n)
    dist = dist + dist.t()
    dist = dist - 2 * inputs @ inputs.t()
    dist = dist.clamp(min=1e-12).sqrt()
    mask = targets.expand(n, n).eq(targets.expand(n, n).t())
    dist_ap, dist_an = [], []
    for i in range(n):
        dist_ap.append(dist[i][mask[i]].max().unsqueeze(0))
        if dist[i][mask[i] == 0].numel() == 0:
            dist_an.append((dist[i][mask[i]].max() + margin).unsqueeze(0))
        else:
            dist_an.append(dist[i][mask[i] == 0].min().unsqueeze(0))
    dist_ap = torch.cat(dist_ap)
    if center is not None:
        for i in range(n):
            for j in range(len(center)):
                distp = torch.norm(inputs[i].unsqueeze(0) - center[j], 2).clamp(min=1e-12)
                dist_an[i] = min(dist_an[i].squeeze(0), distp).unsqueeze(0)
    dist_an = torch.cat(dist_an)
    return torch.nn.MarginRankingLoss(margin=margin)(dist_an, dist_ap, torch.ones_like(dist_an))


@pytest.mark.parametrize("with_protos", [False, True])
@pytest.mark.parametrize("labels", [[0, 0, 1, 1, 2, 0], [1, 1, 1, 1, 1, 1]])
def test_augmented_triplet_loss_matches_the_official_loop(with_protos, labels):
    g = torch.Generator().manual_seed(3)
    f = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    protos = F.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64), dim=1) if with_protos else None
    y = torch.tensor(labels)
    assert_close(augmented_triplet_loss(f, y, 1.5, protos), _official_atl(f, y, protos, 1.5))


def test_prototypes_are_class_means_and_prediction_is_the_nearest_normalised_mean(three):
    _, ctx = three
    net = ctx.build_net(3)
    assert isinstance(net, LoRAMinusViT)
    with torch.no_grad():
        images = torch.cat([x for x, _ in task_batches(1, 2)])
        labels = torch.cat([y for _, y in task_batches(1, 2)])
        net1 = ctx.build_net(2)  # the network as it stood when task 1's prototypes were taken
        feats = net1.features(images)
        for c in range(2):
            assert_close(net.prototypes["task_001"][c], feats[labels == 2 + c].mean(0), rtol=1e-5, atol=1e-5)
        x = torch.cat([x for x, _ in task_batches(2, 4)])
        feats = F.normalize(net.features(x), dim=1)
        protos = F.normalize(torch.cat([net.prototypes[f"task_{t:03d}"] for t in range(3)]), dim=1)
        nme = torch.cdist(protos.double(), feats.double()).pow(2).T.argmin(dim=1)
        assert torch.equal(net(x).argmax(dim=1), nme)


def test_the_triplet_weight_zero_leaves_cross_entropy_only():
    method, ctx = run_sessions(1, epochs=1, triplet_weight=0.0)
    hooks = method.training_hooks(ctx.build_net(1), ctx)
    assert hooks.extra_loss(None, torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)) is None


@pytest.mark.parametrize("bad", [{"threshold": 0.0}, {"threshold": 1.5}, {"triplet_weight": -1.0}, {"triplet_margin": "x"}])
def test_bad_settings_name_their_key(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LoRAMinusConfig(**bad)
