"""One evaluation pass that yields every prediction the field reports, and peak memory.

Per sample, from the same logits over the concatenated heads of the seen tasks:

* the class-incremental prediction — argmax over every seen head (what
  :func:`model.training.predict` returns, and the paper's accuracy);
* the task-given prediction — argmax within the true task's head only
  (task-incremental accuracy; the reference's ``y_pred_with_task``);
* the predicted task — the head holding the class-incremental argmax
  (task-id prediction accuracy; the reference's ``y_pred_task``).

The heads hold consecutive ranges of global labels in the order given, so the
true task of a label and the task of a column follow from the head sizes.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .net import ContinualViT
from .training import Batches, autocast_context

if TYPE_CHECKING:
    import numpy

__all__ = ["Predictions", "head_sizes", "predict_with_tasks", "peak_memory_mb", "reset_peak_memory"]


@dataclass(frozen=True)
class Predictions:
    """Per-sample predictions of one pass, all ``(N,)`` int64 on the CPU.

    Attributes:
        labels: true global labels.
        class_il: argmax over every head given (global label).
        task_il: argmax within the true task's head (global label).
        task_id: index (into the head names given) of the head holding ``class_il``.
    """

    labels: Tensor
    class_il: Tensor
    task_il: Tensor
    task_id: Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def as_numpy(self) -> dict[str, "numpy.ndarray"]:
        """The four arrays by name, e.g. for ``pipeline.reporting.metrics.prediction_accuracies(**p.as_numpy(), head_sizes=…)``."""
        return {k: getattr(self, k).numpy() for k in ("labels", "class_il", "task_il", "task_id")}


def head_sizes(net: ContinualViT, head_names: Sequence[str]) -> list[int]:
    """Classes of each named head, in the order given."""
    return [int(net.heads.heads[h].out_features) for h in head_names]  # type: ignore[union-attr]


def _split_predictions(logits: Tensor, labels: Tensor, sizes: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    ends = torch.tensor(list(sizes), device=logits.device).cumsum(0)
    starts = ends - ends.new_tensor(list(sizes))
    class_il = logits.argmax(dim=1)
    task_id = torch.searchsorted(ends, class_il, right=True)
    true_task = torch.searchsorted(ends, labels, right=True)
    columns = torch.arange(logits.shape[1], device=logits.device)
    inside = (columns >= starts[true_task, None]) & (columns < ends[true_task, None])
    task_il = logits.masked_fill(~inside, float("-inf")).argmax(dim=1)
    return class_il, task_il, task_id


@torch.no_grad()
def predict_with_tasks(
    net: ContinualViT,
    batches: Batches,
    device: torch.device,
    head_names: Sequence[str],
    precision: str = "fp32",
) -> Predictions:
    """One pass over ``batches``: class-incremental, task-given and task-id predictions.

    Args:
        net: the network; its heads ``head_names`` are evaluated, concatenated
            in that order (so column k is global label k when they are the seen
            tasks' heads in task order).
        batches: ``(images, global_labels)`` batches.
        device: compute device.
        head_names: the heads of the seen tasks, in task order.
        precision: ``"bf16"`` autocasts the forward pass.

    Raises:
        ValueError: a label outside the given heads.
    """
    net.eval()
    sizes = head_sizes(net, head_names)
    total = sum(sizes)
    out: dict[str, list[Tensor]] = {"labels": [], "class_il": [], "task_il": [], "task_id": []}
    for images, labels in batches:
        labels = labels.to(device, non_blocking=True)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= total):
            raise ValueError(f"labels must lie in [0, {total}) for heads {list(head_names)}")
        with autocast_context(device, precision):
            logits = net(images.to(device, non_blocking=True), list(head_names))
        for key, value in zip(("class_il", "task_il", "task_id"), _split_predictions(logits.float(), labels, sizes)):
            out[key].append(value.cpu())
        out["labels"].append(labels.cpu())
    return Predictions(**{k: torch.cat(v) if v else torch.empty(0, dtype=torch.long) for k, v in out.items()})


_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def reset_peak_memory(device: torch.device | None = None) -> None:
    """Start a new peak: the process's resident-set high-water mark (Linux: writing ``5``
    to ``/proc/self/clear_refs`` resets ``VmHWM``) and, on a CUDA device, the allocator's.

    A reused Ray worker runs many stages; without the reset every stage would report
    the largest stage the worker ever ran.
    """
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
    except OSError:  # not Linux, or /proc read-only: the lifetime peak stays (peak_memory_mb says which)
        pass
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def _rss_high_water_mb() -> float | None:
    """``VmHWM`` of ``/proc/self/status`` in MiB (resettable), or ``None`` where there is none."""
    try:
        with open(_STATUS) as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_memory_mb(device: torch.device | None = None) -> dict[str, float]:
    """Peak memory of this process in MiB since the last :func:`reset_peak_memory`.

    ``rss``: the resident set's high-water mark (``VmHWM`` on Linux, reset per stage;
    elsewhere ``getrusage``'s lifetime peak). ``cuda_allocated`` / ``cuda_reserved``:
    the CUDA caching allocator's peaks, when ``device`` is a CUDA device.
    """
    rss = _rss_high_water_mb()
    if rss is None:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss = maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux
    out = {"rss": rss}
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        out["cuda_allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["cuda_reserved"] = torch.cuda.max_memory_reserved(device) / 2**20
    return out
