"""Classifier alignment (InfLoRA+CA): sampling and head re-training."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from model import ContinualViT, create_backbone
from model.alignment import AlignSpec, align_heads, sample_gaussian


def test_samples_follow_the_gaussian():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov = a @ a.T + torch.eye(4, dtype=torch.float64)
    mean = torch.arange(4, dtype=torch.float64)
    x = sample_gaussian(mean, cov, 20000, g).double()
    assert_close(x.mean(0), mean, atol=0.08, rtol=0)
    assert_close(torch.cov(x.T), cov, atol=0.15, rtol=0.05)
    again = sample_gaussian(mean, cov, 5, torch.Generator().manual_seed(1))
    assert_close(again, sample_gaussian(mean, cov, 5, torch.Generator().manual_seed(1)), rtol=0, atol=0)


def test_alignment_rebalances_biased_heads():
    """Heads biased towards the newest task are re-balanced by training on sampled features."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = ContinualViT(create_backbone("vit_tiny_patch16_224", overrides={"img_size": 8, "patch_size": 4, "in_chans": 1, "embed_dim": 8, "depth": 1, "num_heads": 2}))
    g = torch.Generator().manual_seed(0)
    dim = net.embed_dim
    means = {c: torch.zeros(dim, dtype=torch.float64) for c in range(4)}
    for c in range(4):
        means[c][c] = 3.0
    stats = {c: (means[c], torch.eye(dim, dtype=torch.float64) * 0.1) for c in range(4)}
    net.heads.add("task_000", 2, generator=g)
    net.heads.add("task_001", 2, generator=g)
    with torch.no_grad():
        net.heads.heads["task_001"].bias.fill_(3.0)  # predictions lean to the new task
    test = torch.cat([sample_gaussian(means[c], stats[c][1], 50, g) for c in range(4)])
    labels = torch.arange(4).repeat_interleave(50)
    before = (net.heads(test).argmax(1) == labels).float().mean()
    losses = align_heads(net, stats, [[0, 1], [2, 3]], AlignSpec(epochs=40, samples_per_class=64, logit_norm=None), g, torch.device("cpu"))
    after = (net.heads(test).argmax(1) == labels).float().mean()
    assert before <= 0.6 and after > 0.9, (before, after)
    assert len(losses) == 40 and losses[-1] < losses[0]
    assert not any(p.requires_grad for p in net.heads.parameters())
