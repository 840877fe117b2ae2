"""Method registry, sessions and the interference property of InfLoRA."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from model import LoRAConfig, TrainSpec, available_methods, create_backbone, create_method, probe_sq_norm
from model.lora import BranchChange
from model.methods import method_config_class
from model.methods.memory_context import InMemoryContext
from model.subspace import memory_bank_from_state

OVERRIDES = {"img_size": 8, "patch_size": 4, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 2}
DEVICE = torch.device("cpu")


def test_registry_knows_the_methods_and_rejects_unknown_names():
    assert {"inflora", "seq_lora", "joint"} <= set(available_methods())
    with pytest.raises(ValueError, match="unknown method 'nope'; known methods"):
        create_method("nope")


def test_method_config_validation():
    inflora = method_config_class("inflora")
    with pytest.raises(ValueError, match="lamb"):
        inflora(lamb=1.5)
    with pytest.raises(ValueError, match="lame"):
        inflora(lame=0)
    with pytest.raises(ValueError, match=r"lame\n.* must be >= lamb \(0.9\)"):
        inflora(lamb=0.9, lame=0.5)
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(TypeError, match="takes a InfLoRAConfig"):
        create_method("inflora", method_config_class("sd_lora")())


def test_every_method_uploads_its_trained_state_and_only_slots_it_writes():
    """The upload list is the methods' own (``Step.uploads``), a subset of what each step writes."""
    from model.methods import Step

    for name in available_methods():
        steps = create_method(name).steps()
        uploaded = {slot for step in steps for slot in step.uploads}
        written = {slot for step in steps for slot in step.writes}
        assert ("adapter" in uploaded) == ("adapter" in written), name  # what a method trains is kept
        assert "design" not in uploaded and "class_stats" not in uploaded, name  # scratch slots stay local
    assert {s for step in create_method("inflora").steps() for s in step.uploads} == {"adapter", "memory"}
    assert {s for step in create_method("inflora_ca").steps() for s in step.uploads} == {"adapter", "memory", "aligned_heads"}
    with pytest.raises(ValueError, match="uploads \\['memory'\\], which it does not write"):
        Step("train", writes=("adapter",), uploads=("memory",))


def test_sessions():
    assert create_method("inflora").sessions(3) == [[0], [1], [2]]
    assert create_method("joint").sessions(3) == [[0, 1, 2]]
    seq = create_method("seq_lora")
    assert {seq.branch_name(s) for s in range(3)} == {"shared"}


def family(generator: torch.Generator, offset: int, n: int = 256, k: int = 2):
    """A task whose images are random combinations of ``k`` fixed patterns: its
    inputs span few directions at every layer, and another task's spans others."""
    base = torch.randn(k, 1, 8, 8, generator=generator)
    coef = torch.randn(n, k, generator=generator)
    images = torch.einsum("nk,kchw->nchw", coef, base)
    labels = (coef[:, 0] > 0).long() + offset
    return [(images[i : i + 32], labels[i : i + 32]) for i in range(0, n, 32)]


# The reference's energy rule keeps only the directions whose cumulative energy is
# still *below* the threshold, so a near-1 threshold is needed to keep every
# direction the synthetic old task uses (its spectrum has a sharp cliff).
LAMB = 1 - 1e-6


def run_two_tasks(method_name: str, lamb: float = LAMB, rank: int = 2):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = create_backbone("vit_tiny_patch16_224", overrides=OVERRIDES)
    g = torch.Generator().manual_seed(1)
    tasks = [family(g, 0), family(g, 2)]
    config = method_config_class(method_name)(rank=rank, **({"lamb": lamb} if method_name == "inflora" else {}))
    method = create_method(method_name, config)
    ctx = InMemoryContext(method, backbone, tasks, [2, 2], TrainSpec(lr=1e-2, epochs=5))
    memories, features_before = [], None
    for s in range(2):
        if s == 1:
            with torch.no_grad():
                features_before = torch.cat([ctx.build_net(1).features(x) for x, _ in tasks[0]])
        for step in method.steps():
            if step.name != "eval":
                ctx.run(s, step.name)
        memory = memory_bank_from_state(ctx.load("memory", s)) if ctx.exists("memory", s) else None
        memories.append({k: m.projector() for k, m in memory.items()} if memory else None)
    net = ctx.build_net(2)
    with torch.no_grad():
        features_after = torch.cat([net.features(x) for x, _ in tasks[0]])
    return net, method, tasks, memories, features_before, features_after


def test_inflora_new_branch_barely_touches_old_inputs():
    net, method, tasks, memories, before, after = run_two_tasks("inflora")
    # the designed down-projections are orthonormal (up to the scale) and orthogonal to
    # the memory as it stood after task 0
    for name, layer in net.lora_layers.items():
        down = layer.branches["task_001"].down.double() / method.config.down_scale
        assert_close(down @ down.T, torch.eye(2, dtype=torch.float64), atol=1e-5, rtol=0)
        assert_close(down @ memories[0][name], torch.zeros_like(down), atol=1e-5, rtol=0)
    probes = {n: BranchChange(l.branches["task_001"], None) for n, l in net.lora_layers.items()}
    ratio = math.sqrt(probe_sq_norm(net, probes, tasks[0], DEVICE) / probe_sq_norm(net, probes, tasks[1], DEVICE))
    assert ratio < 0.1, ratio
    # the old task's features hardly move (relative change)
    assert float((after - before).norm() / before.norm()) < 0.03


def test_seq_lora_interferes_where_inflora_does_not():
    net, _, tasks, _, before, after = run_two_tasks("seq_lora")
    drift = float((after - before).norm() / before.norm())
    _, _, _, _, before_i, after_i = run_two_tasks("inflora")
    drift_inflora = float((after_i - before_i).norm() / before_i.norm())
    assert drift > 5 * drift_inflora, (drift, drift_inflora)


def test_memory_that_fills_the_space_is_a_clear_error():
    from model.subspace import SubspaceError

    # with lamb = 1 the first task's memory keeps every direction its inputs span
    # (24 of the 32 at the first block), leaving fewer than the rank outside
    with pytest.raises(SubspaceError, match=r"larger than the \d+ input dimensions left outside"):
        run_two_tasks("inflora", lamb=1.0, rank=12)


def test_a_step_may_run_in_the_first_or_the_later_sessions_only():
    from model.methods import Step

    first, later, every = Step("a", sessions="first"), Step("b", sessions="later"), Step("c")
    assert [first.runs_in(s) for s in range(3)] == [True, False, False]
    assert [later.runs_in(s) for s in range(3)] == [False, True, True]
    assert all(every.runs_in(s) for s in range(3))
    with pytest.raises(ValueError, match="Step 'd': sessions must be 'all', 'first' or 'later'"):
        Step("d", sessions="odd")  # type: ignore[arg-type]
