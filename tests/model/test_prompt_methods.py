"""L2P, DualPrompt and CODA-Prompt as continual methods: what trains, what stays, resume.

Runs each method through the shared ``train``/``eval`` steps on a tiny ViT with
:class:`~model.methods.memory_context.InMemoryContext` (no pipeline).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from model import TrainSpec, create_method
from model.methods.coda_prompt import CodaPromptConfig
from model.methods.dualprompt import DualPromptConfig
from model.methods.l2p import L2PConfig
from model.methods.memory_context import InMemoryContext
from model.prompts import PromptedViT
from method_fixtures import task_batches
from method_fixtures import tiny_backbone as backbone

CONFIGS = {
    "l2p": L2PConfig(pool_size=4, length=2, top_k=2, layers=[0]),
    "dualprompt": DualPromptConfig(pool_size=2, length=2, g_length=2, g_layers=[0], e_layers=[1]),
    "coda_prompt": CodaPromptConfig(pool_size=4, length=2, layers=[0, 1]),
}
METHODS = list(CONFIGS)


class RecordingContext(InMemoryContext):
    """Keeps every network it builds, so a test can look at the one a step trained."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nets: list[PromptedViT] = []

    def build_net(self, sessions_done: int):
        net = super().build_net(sessions_done)
        self.nets.append(net)
        return net


class Killed(RuntimeError):
    pass


class KilledAfterFirstCheckpoint(RecordingContext):
    """Simulates a kill right after the first mid-session checkpoint of session ``kill_session``."""

    kill_session = 1

    def save_checkpoint(self, payload) -> None:
        super().save_checkpoint(payload)
        if self.session == self.kill_session and not getattr(self, "killed", False):
            self.killed = True
            raise Killed("simulated kill after epoch 1")


def make_ctx(name: str, sessions: int = 2, epochs: int = 2, cls=RecordingContext):
    method = create_method(name, CONFIGS[name])
    data = [task_batches(s, 2 * s, 32) for s in range(sessions)]
    return cls(method, backbone(), data, [2] * sessions, TrainSpec(optimizer="adam", lr=1e-2, epochs=epochs))


@pytest.mark.parametrize("name", METHODS)
def test_two_sessions_train_and_evaluate_every_seen_task(name):
    ctx = make_ctx(name)
    results = ctx.run_all()
    train0, eval0, train1, eval1 = results
    assert [r.task for r in eval0.eval] == [0] and [r.task for r in eval1.eval] == [0, 1]
    assert all(0.0 <= r.test <= 1.0 and r.count == 32 for r in eval1.eval)
    assert len(train1.epochs) == 2 and all(math.isfinite(e["loss"]) for e in train1.epochs)
    state = ctx.load("adapter", 1)
    assert any(k.startswith("prompt.") for k in state) and {k for k in state if k.startswith("head.")} == {
        "head.task_001.weight", "head.task_001.bias"}
    assert not any(k.startswith(("lora.", "backbone.", "blocks.")) for k in state)


def expected_trainable(net: PromptedViT, name: str, task: int) -> set[int]:
    """The official trainable set of ``task`` (``methods/sprompt_*.py`` ``_train``), by definition."""
    p = net.prompts
    if name == "l2p":
        prompts = [p.prompts, p.keys]  # the whole pool, every task
    elif name == "dualprompt":
        prompts = [p.g_prompts, p.e_prompts[task], p.e_keys[task]]
    else:
        c = p.components[f"task_{task:03d}"]
        prompts = [c.p, c.k, c.a]
    head = net.heads.heads[f"task_{task:03d}"]
    return {id(x) for x in prompts} | {id(x) for x in head.parameters()}


@pytest.mark.parametrize("name", METHODS)
def test_only_the_task_prompts_and_head_train_and_the_rest_stays_bit_identical(name):
    ctx = make_ctx(name)
    ctx.run(0, "train")
    ctx.run(1, "train")
    trained = ctx.nets[-1]  # the network session 1's train step built and trained
    assert trained.task == 1
    requires = {id(p) for p in trained.parameters() if p.requires_grad}
    assert requires == expected_trainable(trained, name, 1)
    # backbone: bit-identical to the pretrained one after two sessions
    ref = backbone().state_dict()
    for key, value in trained.backbone.state_dict().items():
        assert torch.equal(value, ref[key]), key
    # session 0's head and (except L2P, whose pool is shared) its prompts are unchanged by session 1
    before, after = ctx.load("adapter", 0), ctx.load("adapter", 1)
    after_net = ctx.build_net(2)
    for key in ("weight", "bias"):
        assert torch.equal(getattr(after_net.heads.heads["task_000"], key).detach(), before[f"head.task_000.{key}"])
    old = {
        "l2p": [],
        "dualprompt": ["prompt.e_prompts.0", "prompt.e_keys.0"],
        "coda_prompt": ["prompt.components.task_000.p", "prompt.components.task_000.k", "prompt.components.task_000.a"],
    }[name]
    for key in old:
        assert torch.equal(before[key], after[key]), key
    moved = {"l2p": "prompt.prompts", "dualprompt": "prompt.e_prompts.1", "coda_prompt": "prompt.components.task_001.p"}[name]
    if name != "coda_prompt":  # coda's task-1 components do not exist after session 0
        assert not torch.equal(before[moved], after[moved])
    if name == "dualprompt":  # the shared G-prompts train in every task
        assert not torch.equal(before["prompt.g_prompts"], after["prompt.g_prompts"])


@pytest.mark.parametrize("name", METHODS)
def test_resume_mid_session_is_bit_identical(name):
    straight = make_ctx(name)
    straight.run(0, "train")
    straight.run(1, "train")
    killed = make_ctx(name, cls=KilledAfterFirstCheckpoint)
    killed.run(0, "train")
    with pytest.raises(Killed):
        killed.run(1, "train")
    assert killed.checkpoint is not None and ("adapter", 1) not in killed.store
    killed.run(1, "train")  # resumes from the epoch-1 checkpoint
    a, b = straight.load("adapter", 1), killed.load("adapter", 1)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_l2p_extra_loss_is_the_official_key_pull():
    """``prompt_loss.sum()`` of ``sprompt_l2p.py`` with ``zoo.L2P``: Σ_{b,b',j} (1 − cos(q_b, key[idx[b', j]]))."""
    ctx = make_ctx("l2p", sessions=1, epochs=1)
    ctx.run(0, "train")
    net = ctx.build_net(1)
    x, y = task_batches(0, 0)[0]
    hooks = ctx.method.training_hooks(net, ctx)
    with torch.enable_grad():
        logits = net(x, ["task_000"])
        extra = hooks.extra_loss(net, logits, y)
    q = net.query(x)
    keys = net.prompts.keys[0].detach()
    cos = F.normalize(q, dim=1) @ F.normalize(keys, dim=1).T
    idx = cos.topk(2, dim=1).indices
    expected = sum(1.0 - cos[b, idx[c, j]] for b in range(len(x)) for c in range(len(x)) for j in range(2))
    assert_close(extra.detach(), expected, rtol=1e-5, atol=1e-4)


def test_coda_prompt_adds_nothing_at_the_official_ortho_weight_and_splits_the_pool_per_task():
    ctx = make_ctx("coda_prompt")
    ctx.run(0, "train")
    ctx.run(1, "train")
    net = ctx.nets[-1]
    assert [c.k.shape[1] for c in net.prompts.components.values()] == [2, 2]  # 4 components over 2 tasks
    x, y = task_batches(1, 2)[0]
    with torch.enable_grad():
        logits = net(x, ["task_001"])
    assert float(ctx.method.training_hooks(net, ctx).extra_loss(net, logits, y)) == 0.0


def test_dualprompt_refuses_fewer_e_prompts_than_tasks():
    ctx = make_ctx("dualprompt", sessions=3, epochs=1)
    with pytest.raises(ValueError, match="method.dualprompt.pool_size"):
        ctx.run(0, "train")


@pytest.mark.parametrize(
    "cls, kwargs, key",
    [
        (L2PConfig, {"top_k": 40}, "top_k"),
        (L2PConfig, {"length": 3}, "length"),
        (DualPromptConfig, {"e_layers": []}, "e_layers"),
        (CodaPromptConfig, {"layers": [0, 0]}, "layers"),
        (CodaPromptConfig, {"ortho_mu": -1.0}, "ortho_mu"),
    ],
)
def test_bad_settings_fail_naming_the_key(cls, kwargs, key):
    with pytest.raises(ValueError, match=key):
        cls(**kwargs)
