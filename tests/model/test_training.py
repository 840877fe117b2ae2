"""Optimiser, schedules and the training loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model.training import NonFiniteTrainingError, TrainSpec, make_optimizer, reference_cosine, train_session


def test_reference_cosine_schedule():
    f = reference_cosine(20)
    assert f(0) == 1.0
    assert f(19) == pytest.approx(math.cos(99 * math.pi / 200))
    assert reference_cosine(1)(0) == 1.0


def test_adam_uses_reference_cosine_and_sgd_cosine_annealing():
    p = [nn.Parameter(torch.zeros(2))]
    opt, sched = make_optimizer(p, TrainSpec(optimizer="adam", lr=1.0, epochs=3))
    assert isinstance(opt, torch.optim.Adam)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, math.cos(99 * math.pi / 400), math.cos(99 * math.pi / 200)])
    opt, sched = make_optimizer(p, TrainSpec(optimizer="sgd", lr=1.0, epochs=4))
    assert isinstance(opt, torch.optim.SGD) and isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)


def test_delayed_cosine_steps_after_the_first_epoch_as_dualprompt_and_coda_prompt():
    p = [nn.Parameter(torch.zeros(2))]
    opt, sched = make_optimizer(p, TrainSpec(optimizer="adam", lr=1.0, epochs=4, scheduler_delay=1))
    assert isinstance(sched, torch.optim.lr_scheduler.LambdaLR)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    f = reference_cosine(4)
    assert lrs == pytest.approx([f(0), f(0), f(1), f(2)])  # epoch e: the factor of max(e - 1, 0)
    with pytest.raises(ValueError, match="scheduler_delay\n.*applies to the Adam cosine schedule"):
        TrainSpec(optimizer="sgd", scheduler_delay=1)
    with pytest.raises(ValueError, match="scheduler_delay\n.*greater than or equal to 0"):
        TrainSpec(scheduler_delay=-1)


def test_multistep_and_head_lr():
    body, head = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    spec = TrainSpec(optimizer="sgd", lr=5e-3, epochs=5, scheduler="multistep", milestones=[4], gamma=0.1, head_lr=0.01)
    opt, sched = make_optimizer([body, head], spec, head_params=[head])
    assert [g["lr"] for g in opt.param_groups] == [5e-3, 0.01]
    assert opt.param_groups[1]["params"] == [head]
    for _ in range(4):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 1e-3])


def test_train_spec_validation():
    """The settings name their field (their YAML path, ``train.…``, is the config layer's)."""
    with pytest.raises(ValueError, match="scheduler"):
        TrainSpec(scheduler="step")
    with pytest.raises(ValueError, match="head_lr"):
        TrainSpec(head_lr=0)
    with pytest.raises(ValueError, match="precision"):
        TrainSpec(precision="fp16")


def test_hooks_fire_around_each_batch_and_step_in_order():
    """before_batch (own step possible) → forward/backward → before_optimizer_step → step → after_optimizer_step."""
    from method_fixtures import task_batches, tiny_backbone

    from model.net import ContinualViT
    from model.training import TrainingHooks, train_session

    net = ContinualViT(tiny_backbone(), [])
    head = net.heads.add("task_000", 2, generator=torch.Generator().manual_seed(0))
    params = list(head.parameters())
    calls: list[tuple[str, float]] = []

    class Spy(TrainingHooks):
        def before_batch(self, net, images, targets, optimizer):
            assert targets.min() >= 0 and images.shape[0] == targets.shape[0]
            calls.append(("batch", float(head.weight.detach().sum())))

        def before_optimizer_step(self, net, params):
            calls.append(("before", float(head.weight.detach().sum())))

        def after_optimizer_step(self, net, params):
            calls.append(("after", float(head.weight.detach().sum())))

    train_session(net, params, task_batches(0, 0, n=32), TrainSpec(epochs=1, lr=0.1), head_names=["task_000"], class_offset=0,
                  device=torch.device("cpu"), hooks=Spy())
    assert [c[0] for c in calls] == ["batch", "before", "after"] * 2
    assert calls[1][1] == calls[0][1] and calls[2][1] != calls[1][1]  # the step happens between the two


# ----------------------------------------------------------------- the training loop without host reads
class _Net(nn.Module):
    """A stand-in for ContinualViT: ``net(images, head_names)`` → logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 3)

    def forward(self, images, head_names=None):
        return self.body(images)


def _batches(steps: int, poison: int | None = None, size: int = 5) -> list:
    g = torch.Generator().manual_seed(0)
    out = []
    for k in range(steps):
        x = torch.randn(size, 4, generator=g)
        if k == poison:
            x[0, 0] = float("inf")
        out.append((x, torch.randint(0, 3, (size,), generator=g)))
    return out


def _train(batches, fused: bool, epochs: int = 2, lr: float = 0.05):
    torch.manual_seed(0)
    net = _Net()
    params = list(net.parameters())
    spec = TrainSpec(lr=lr, epochs=epochs, batch_size=5)
    opt, sched = make_optimizer(params, spec, fused=fused)
    losses = train_session(net, params, batches, spec, head_names=[], class_offset=0, device=torch.device("cpu"),
                           optimizer=opt, scheduler=sched)
    return net, losses


def test_fused_loop_trains_like_the_checked_loop_to_float_precision():
    (a, la), (b, lb) = _train(_batches(4), fused=False), _train(_batches(4), fused=True)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert la == pytest.approx(lb, rel=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_a_non_finite_step_changes_no_parameter_and_is_named(fused):
    """Step 2 of epoch 1 has an Inf input: the parameters stay those after step 1, on both loops."""
    clean = _batches(4)
    poisoned = clean[:2] + _batches(4, poison=2)[2:3] + clean[3:]
    expected, _ = _train(clean[:2], fused=fused, epochs=1)
    torch.manual_seed(0)
    net = _Net()
    params = list(net.parameters())
    spec = TrainSpec(lr=0.05, epochs=1, batch_size=5)
    opt, sched = make_optimizer(params, spec, fused=fused)
    with pytest.raises(NonFiniteTrainingError, match=r"at epoch 0, step 2 \(lr 0.05\)"):
        train_session(net, params, poisoned, spec, head_names=[], class_offset=0, device=torch.device("cpu"), optimizer=opt, scheduler=sched)
    for p, q in zip(net.parameters(), expected.parameters()):
        assert torch.equal(p, q)
    assert all(torch.isfinite(v).all() for state in opt.state.values() for v in state.values())


def test_fused_loop_reads_the_device_once_per_epoch_whatever_the_steps(monkeypatch):
    reads = {"n": 0}
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            reads["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def reads_for(steps: int) -> int:
        reads["n"] = 0
        _train(_batches(steps), fused=True, epochs=1)
        return reads["n"]

    assert reads_for(2) == reads_for(7) > 0  # counted, and constant in the number of steps


def test_compiled_last_batch_is_padded_to_the_batch_size(monkeypatch):
    shapes = []
    monkeypatch.setattr(torch, "compile", lambda net: (lambda x, h: (shapes.append(tuple(x.shape)), net(x, h))[1]))
    net = _Net()
    params = list(net.parameters())
    spec = TrainSpec(lr=0.05, epochs=1, batch_size=5, compile=True)
    batches = _batches(2) + [(torch.randn(3, 4), torch.tensor([0, 1, 2]))]
    train_session(net, params, batches, spec, head_names=[], class_offset=0, device=torch.device("cpu"))
    assert shapes == [(5, 4)] * 3
