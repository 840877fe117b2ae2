"""The one-pass evaluation against logits chosen by hand, and the peak-memory reader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.backbone import create_backbone
from model.evaluation import head_sizes, peak_memory_mb, predict_with_tasks, reset_peak_memory
from model.net import ContinualViT
from model.training import predict

OVERRIDES = {"img_size": 8, "patch_size": 4, "in_chans": 1, "embed_dim": 5, "depth": 1, "num_heads": 1}


def _identity_net() -> ContinualViT:
    """Heads of 2 and 3 classes whose logits are the 5 input numbers themselves."""
    net = ContinualViT(create_backbone("vit_tiny_patch16_224", overrides=OVERRIDES))
    net.features = lambda x: x  # the "feature" is the input row
    eye = torch.eye(5)
    for name, rows in (("task_000", eye[:2]), ("task_001", eye[2:])):
        head = net.heads.add(name, len(rows))
        with torch.no_grad():
            head.weight.copy_(rows)
            head.bias.zero_()
    return net


def test_predictions_by_hand():
    logits = torch.tensor([
        [5.0, 1.0, 2.0, 3.0, 4.0],  # label 0: right everywhere
        [3.0, 1.0, 9.0, 2.0, 0.0],  # label 1: class-IL says 2 (task 1); within head 0 says 0
        [7.0, 0.0, 1.0, 2.0, 1.0],  # label 3: class-IL says 0 (task 0); within head 1 says 3
        [0.0, 0.0, 1.0, 2.0, 6.0],  # label 4: right everywhere
    ])
    labels = torch.tensor([0, 1, 3, 4])
    batches = [(logits[:3], labels[:3]), (logits[3:], labels[3:])]
    p = predict_with_tasks(_identity_net(), batches, torch.device("cpu"), ["task_000", "task_001"])
    assert p.class_il.tolist() == [0, 2, 0, 4]
    assert p.task_il.tolist() == [0, 0, 3, 4]
    assert p.task_id.tolist() == [0, 1, 0, 1]
    assert p.labels.tolist() == [0, 1, 3, 4] and len(p) == 4


def test_class_il_is_the_training_predict():
    torch.manual_seed(0)
    net = ContinualViT(create_backbone("vit_tiny_patch16_224", overrides=OVERRIDES))
    net.heads.add("task_000", 2)
    net.heads.add("task_001", 3)
    images, labels = torch.randn(12, 1, 8, 8), torch.randint(0, 5, (12,))
    batches = [(images[:7], labels[:7]), (images[7:], labels[7:])]
    p = predict_with_tasks(net, batches, torch.device("cpu"), ["task_000", "task_001"])
    preds, _ = predict(net, batches, torch.device("cpu"))
    assert torch.equal(p.class_il, preds)
    assert ((p.task_il < 2) == (labels < 2)).all()  # always inside the true task's head
    empty = predict_with_tasks(net, [], torch.device("cpu"), ["task_000", "task_001"])
    assert len(empty) == 0


def test_peak_rss_grows_with_a_large_allocation():
    before = peak_memory_mb()["rss"]
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    after = peak_memory_mb(torch.device("cpu"))
    assert float(block.sum()) > 0
    assert after["rss"] >= before and set(after) == {"rss"}
    assert after["rss"] > 64  # the process holds at least the block


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only: VmHWM reset")
def test_peak_rss_is_per_stage_after_a_reset():
    """A reused worker's next stage does not inherit the previous stage's peak."""
    block = torch.ones(256 * 2**20 // 4)  # 256 MiB, touched: a large stage
    assert float(block.sum()) > 0
    del block
    large = peak_memory_mb()["rss"]
    reset_peak_memory()
    small = peak_memory_mb()["rss"]
    assert small < large - 200  # the freed 256 MiB no longer count


def test_as_numpy_feeds_the_pipeline_metrics():
    from pipeline.reporting.metrics import prediction_accuracies

    logits = torch.tensor([[5.0, 1.0, 2.0, 3.0, 4.0], [3.0, 1.0, 9.0, 2.0, 0.0]])
    net = _identity_net()
    p = predict_with_tasks(net, [(logits, torch.tensor([0, 1]))], torch.device("cpu"), ["task_000", "task_001"])
    # sample 0 right everywhere; sample 1: class-IL 2 (wrong), within head 0 → 0 (wrong), task 1 (wrong)
    acc = prediction_accuracies(**p.as_numpy(), head_sizes=head_sizes(net, ["task_000", "task_001"]))
    assert acc == {"class_il": 0.5, "task_il": 0.5, "task_id": 0.5}
