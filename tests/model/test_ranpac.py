"""RanPAC against its definitions (official ``RanPAC.py``: ``setup_RP``, ``replace_fc``, ``optimise_ridge_parameter``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from model import TrainSpec, create_method
from model.methods.memory_context import InMemoryContext
from model.methods.ranpac import ADAPT_BRANCH, RanPACConfig, RanPACViT, collect_features, ridge_solve, select_ridge
from pipeline.running.state import StageKey
from pipeline.running.stages import stage_dependencies, stage_plan
from method_fixtures import task_batches
from method_fixtures import tiny_backbone as backbone

M = 48


def run_sessions(n: int = 3, **settings):
    method = create_method("ranpac", RanPACConfig(**{"projection_dim": M, "rank": 2, **settings}))
    data = [task_batches(s, 2 * s) for s in range(n)]
    ctx = InMemoryContext(method, backbone(), data, [2] * n, TrainSpec(optimizer="sgd", lr=0.05, epochs=2))
    results = ctx.run_all()
    return method, ctx, results


@pytest.fixture(scope="module")
def three_sessions():
    return run_sessions(3)


def adapted_features(ctx, tasks):
    """The frozen adapted backbone's features of ``tasks``' training samples, computed directly."""
    net = ctx.build_net(1)
    return collect_features(net, [b for t in tasks for b in ctx.train_data[t]], ctx.device)


def test_only_the_first_session_trains_and_every_session_runs_the_statistics_pass():
    method = create_method("ranpac", RanPACConfig(projection_dim=M))
    assert [s.name for s in method.session_steps(0)] == ["train", "stats", "eval"]
    assert [s.name for s in method.session_steps(1)] == ["stats", "eval"]
    plan = [str(k) for k in stage_plan(method, 3)]
    assert "session_000/train" in plan and "session_001/train" not in plan and "session_002/train" not in plan
    # a later session's statistics wait for the previous session's state, not for a training stage
    assert set(stage_dependencies(method, StageKey(1, "stats"))) == {StageKey.split(), StageKey(0, "train"), StageKey(0, "stats")}
    assert stage_dependencies(method, StageKey(0, "stats")) == [StageKey(0, "train")]
    no_phase_1 = create_method("ranpac", RanPACConfig(projection_dim=M, adapt_first_session=False))
    assert [s.name for s in no_phase_1.session_steps(0)] == ["stats", "eval"]


def test_first_session_trains_the_lora_branch_and_the_first_head_only():
    method = create_method("ranpac", RanPACConfig(projection_dim=M, rank=2))
    ctx = InMemoryContext(method, backbone(), [task_batches(0, 0)], [2], TrainSpec(epochs=1))
    net = ctx.build_net(0)
    params = method.begin_session(net, ctx)
    names = {id(p): n for n, p in net.named_parameters()}
    trained = sorted(names[id(p)] for p in params)
    assert {p for p in net.parameters() if p.requires_grad} == set(params)
    branch = [n for n in trained if f".{ADAPT_BRANCH}." in n]
    assert sorted({n.rsplit(".", 1)[1] for n in branch}) == ["down", "up_q", "up_v"]  # q and v rows, down trained too
    assert len(branch) == 3 * 2  # two blocks
    assert [n for n in trained if f".{ADAPT_BRANCH}." not in n] == ["heads.heads.task_000.bias", "heads.heads.task_000.weight"]


def test_gram_and_prototypes_equal_the_direct_sums_over_every_seen_sample(three_sessions):
    method, ctx, _ = three_sessions
    projection = ctx.load("projection", 0)["projection"]
    assert projection.shape == (16, M)
    for s in range(3):
        feats, labels = adapted_features(ctx, range(s + 1))
        h = F.relu(feats.double() @ projection.double())
        y = F.one_hot(labels, 2 * (s + 1)).double()
        stats = ctx.load("stats", s)
        assert_close(stats["gram"].double(), h.T @ h, rtol=1e-5, atol=1e-4)
        assert_close(stats["prototypes"].double(), h.T @ y, rtol=1e-5, atol=1e-4)
        # the prototypes are the per-class sums of the random features
        assert_close(stats["prototypes"][:, 1].double(), h[labels == 1].sum(0), rtol=1e-5, atol=1e-4)


def test_heads_are_the_closed_form_ridge_solution_and_the_logits_read_the_random_features(three_sessions):
    method, ctx, results = three_sessions
    stats_results = [r for r in results if "ridge/lambda" in r.metrics]
    for s in range(3):
        stats = ctx.load("stats", s)
        ridge = stats_results[s].metrics["ridge/lambda"]
        g, q = stats["gram"].double(), stats["prototypes"].double()
        expected = (torch.linalg.inv(g + ridge * torch.eye(M, dtype=torch.float64)) @ q).T
        heads = ctx.load("classifier", s)
        weights = torch.cat([heads[f"head.task_{t:03d}.weight"] for t in range(s + 1)])
        assert_close(weights.double(), expected, rtol=1e-4, atol=1e-5)
    net = ctx.build_net(3)
    assert isinstance(net, RanPACViT) and net.classifier_installed
    x = ctx.train_data[1][0][0]
    with torch.no_grad():
        expected = F.relu(net.features(x) @ ctx.load("projection", 0)["projection"]) @ weights.T
        assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


def test_ridge_selection_picks_the_least_held_out_error():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(60, 30, generator=g, dtype=torch.float64)
    truth = torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = h @ truth + 3.0 * torch.randn(60, 3, generator=g, dtype=torch.float64)  # noisy: neither extreme wins
    ridges = [10.0**k for k in range(-4, 5)]
    chosen, losses = select_ridge(h, y, ridges, 0.25)
    fit, val = h[:45], h[45:]
    direct = []
    for r in ridges:  # the closed form, by the normal equations
        w = torch.linalg.inv(fit.T @ fit + r * torch.eye(30, dtype=torch.float64)) @ fit.T @ y[:45]
        direct.append(float(((val @ w - y[45:]) ** 2).mean()))
    assert_close(torch.tensor(losses), torch.tensor(direct), rtol=1e-6, atol=0)
    best = min(range(len(ridges)), key=lambda i: direct[i])
    assert chosen == ridges[best] and 0 < best < len(ridges) - 1
    # ties go to the first candidate, as np.argmin
    assert select_ridge(h, y, [1.0, 1.0], 0.25)[0] == 1.0
    assert_close(ridge_solve(fit.T @ fit, fit.T @ y[:45], 2.0).T, torch.linalg.solve(fit.T @ fit + 2 * torch.eye(30, dtype=torch.float64), fit.T @ y[:45]))


def test_frozen_backbone_branch_and_projection_stay_bit_identical(three_sessions):
    method, ctx, _ = three_sessions
    pretrained = backbone().state_dict()
    adapter = ctx.load("adapter", 0)
    for sessions_done in (1, 2, 3):
        net = ctx.build_net(sessions_done)
        for name, value in pretrained.items():
            key = name if name in net.backbone.state_dict() else name.replace("attn.qkv.", "attn.qkv.base_layer.")
            assert torch.equal(net.backbone.state_dict()[key], value), name
        state = net.adapter_state([ADAPT_BRANCH], [])
        assert state.keys() == {k for k in adapter if k.startswith("lora.")}
        assert all(torch.equal(state[k], adapter[k]) for k in state)
    # the branch moved in Phase 1 (down trained too), and no later session rewrote the first session's state
    assert any(k.endswith(".down") for k in adapter)
    assert ("adapter", 1) not in ctx.store and ("projection", 1) not in ctx.store


def test_no_projection_is_the_gram_of_the_raw_features():
    method, ctx, results = run_sessions(2, projection_dim=0, adapt_first_session=False)
    feats, labels = collect_features(ctx.build_net(0), [b for t in range(2) for b in ctx.train_data[t]], ctx.device)
    assert_close(ctx.load("stats", 1)["gram"].double(), feats.double().T @ feats.double(), rtol=1e-5, atol=1e-4)
    assert not ctx.build_net(2).lora_layers and results[-1].eval is not None


def test_settings_are_validated_with_the_key():
    for bad, key in (({"projection_dim": -1}, "projection_dim"), ({"ridges": []}, "ridges"), ({"ridges": [1.0, 0.0]}, "ridges"),
                     ({"ridge_val_fraction": 1.0}, "ridge_val_fraction"), ({"targets": ["x"]}, "targets")):
        with pytest.raises(ValueError, match=key):
            RanPACConfig(**bad)
