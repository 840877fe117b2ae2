"""Training throughput of InfLoRA against the floor of any LoRA method, and the covariance share.

Three measurements, all through the project's own ``model/`` code:

1. **Step ratio** — images/s of the floor divided by images/s of an InfLoRA
   training step (target ≤ 1.15), as a function of the number of frozen
   branches already in the network (0, 1, 5, 10, 20 by default).

   * *InfLoRA step*: a :class:`~model.net.ContinualViT` after ``n`` sessions —
     ``n`` frozen branches of rank ``r`` per wrapped layer (random orthonormal
     ``down``, random ``up``: the values do not change the cost) plus the
     current branch, built by the method's own ``begin_session`` — trained by
     :func:`model.training.train_session` (net in ``eval()``, Adam on the current
     ``up`` projections and head, cross-entropy on the session's head, per-step
     loss and accuracy read back, bf16 autocast when asked for).
   * *Floor*: the same timm ViT (its weights shared, not copied), frozen, with a
     trainable head and one trainable zero scalar added to the output of the
     first wrapped block's ``qkv`` projection, trained by the same
     ``train_session`` call. This is the least any LoRA method on ``qkv`` has to
     compute: the full forward, and a backward that carries activation
     gradients from the loss down to the first adapted projection's output,
     without weight gradients of the frozen backbone. A trainable *input* would
     over-charge the floor (the gradient of the patch embedding and of block
     0's ``qkv`` input are not needed); a trainable head alone would
     under-charge it (backward stops at the last block). The scalar itself
     costs one elementwise add and one sum over one block's ``qkv`` output.

   ``model/lora.py`` folds the frozen branches into one cached dense ``qkv``
   weight (only the current branch keeps its low-rank path), so the ratio does
   not grow with the number of frozen branches (within the run-to-run spread).
   What remains over the floor is the current branch in every wrapped layer.
   Measured separately on the 2-core CPU (one ``qkv`` layer, forward + backward,
   process CPU time), it adds to the dense ``qkv`` product about +126 % at the
   demo's shape (1,088 tokens, d = 64, r = 4), +69 % at ``tiny64``'s (544
   tokens, d = 192, r = 10) and +12 % at ``base224``'s (197 tokens, d = 768,
   r = 10): eight rank-r matmuls (down, up_k, up_v forward; input and weight
   gradients backward) running at roughly a seventh of the dense product's
   FLOP rate, plus two full-size copies of the q|k|v output (the forward
   concatenation and the split's backward) and two adds. Everything else is
   small: the wrapper with only frozen branches costs about what the plain
   ``nn.Linear`` does; Adam over the extra ``up`` tensors is < 1 % of a step;
   the frozen-weight cache check is ~9 µs per frozen branch per layer and
   forward (~1 % of a ``tiny64`` step at 20 branches).

   The two run alternately in one process; each InfLoRA timing is divided by
   the mean of the floor timings just before and just after it, and the table
   reports the median over repeats. On a CPU the clock is the
   process's CPU time (one torch thread): other jobs on a shared machine then
   slow the wall clock, not the measurement. On a GPU it is the wall clock,
   read after ``torch.cuda.synchronize``.

2. **Covariance share** — the time of one :func:`model.training.collect_covariances`
   pass over a task's training data against the time of the task: InfLoRA makes
   one pass before training (design) and one after (memory update), so
   ``share = cov_pass / (E · epoch + 2 · cov_pass)`` (target ≤ 10 %). Both are
   measured per image on the same batches (the pipeline uses the training batch
   size for the passes), so the share does not depend on the task size; it is
   reported for the demo's epochs and the paper's (CIFAR-100 20, ImageNet-R 50).
   As in the pipeline, the pass runs in float32 whatever ``--precision`` trains in.

3. **One full task** (``--full-task``) — design (covariance pass + SVD), E
   epochs of training and memory update, timed end to end on synthetic images
   of a task's shape: the CPU demo's (``demo``), or ImageNet-R's / CIFAR-100's
   for a GPU run. Data loading is not included (batches are made up front).

Usage::

    python benchmarks/throughput.py                 # CPU presets: ~2 min on 2 shared cores
    python benchmarks/throughput.py --model vit_base_patch16_224 --img-size 224 \\
        --batch-size 128 --steps 10 --device cuda --precision bf16 --full-task imagenet-r

The second is the paper-scale GPU configuration (ViT-B/16, 224², batch 128,
bf16; 0/1/5/10/20 frozen branches; one ImageNet-R-shaped task of 2,400 images
× 50 epochs); ``--precision fp32`` matches the paper configs (configs/paper/).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from model import ContinualViT, TaskHeads, create_backbone, create_method, head_name
from model.methods.inflora import InfLoRAConfig
from model.methods.sd_lora import SDLoRAConfig
from model.methods import ContinualMethod
from model.methods.memory_context import InMemoryContext
from model.subspace import memory_bank_state
from model.training import TrainSpec, collect_covariances, train_session

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

STEP_RATIO_TARGET = 1.15
COV_SHARE_TARGET = 0.10
PAPER_EPOCHS = {"CIFAR-100": 20, "ImageNet-R": 50}
DEFAULT_BRANCHES = (0, 1, 5, 10, 20)
HEADLINE_FROZEN = 5  # "after 5 tasks": the row the verdict is read from when present
# Run-to-run spread of a row's median ratio seen on the shared 2-core CPU (up to ±0.05):
# verdicts closer than this to the target are flagged as borderline.
RATIO_NOISE = 0.05
INT_COLUMNS = (
    "img_size", "tokens", "embed_dim", "depth", "batch_size", "rank", "frozen_branches", "branch_rank_total",
    "case_epochs", "repeats", "images_per_call", "task_images", "task_epochs",
)  # fmt: skip


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One architecture and batch to measure.

    Args:
        name: label in the tables.
        model: timm architecture name (random weights).
        overrides: timm constructor overrides (``img_size``, ``embed_dim``…).
        batch_size: training batch size.
        rank: rank of every branch.
        classes: classes of the current task's head.
        steps: batches per timed call.
        epochs: epochs per task of this configuration (for the covariance share).
        branches: numbers of frozen branches to measure.
        lora_blocks: wrapped blocks (``"all"``, ``n`` first, or indices).
        repeats: default number of repeats (``--repeats`` overrides).
    """

    name: str
    model: str
    overrides: dict[str, Any]
    batch_size: int
    rank: int
    classes: int
    steps: int
    epochs: int
    branches: tuple[int, ...] = DEFAULT_BRANCHES
    lora_blocks: str | int | list[int] = "all"
    repeats: int = 5

    @property
    def in_chans(self) -> int:
        return int(self.overrides.get("in_chans", 3))

    @property
    def img_size(self) -> int:
        return int(self.overrides.get("img_size", 224))


def demo_case() -> Case:
    """The CPU demo's network (configs/demo.yaml: backbone overrides, rank, batch, epochs)."""
    from pipeline.config import load_config  # the YAML is read here only, to stay in step with the demo

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    return Case(
        name="demo",
        model=cfg.backbone.name,
        overrides=dict(cfg.backbone.overrides),
        batch_size=cfg.train.batch_size,
        rank=cfg.method.config.rank,
        classes=2,
        steps=4,  # one epoch of a demo task (~226 images)
        epochs=cfg.train.epochs,
        lora_blocks=cfg.method.config.blocks,
    )


def preset_cases() -> dict[str, Callable[[], Case]]:
    """CPU presets, sized so that the default run stays within ~5 min on 2 shared cores.

    * ``demo`` — the CPU demo's network at its own range of tasks (0 and 4 frozen branches);
    * ``tiny64`` — ViT-Ti/16 (d = 192, 12 blocks) at 64² (17 tokens), rank 10: the
      sweep over 0, 1, 5, 10, 20 frozen branches (at 20, the total branch rank
      210 exceeds d);
    * ``base224`` — ViT-B/16 (d = 768) at its real 224² (197 tokens), batch 1 (~2 s
      a step on one core), 5 frozen branches (ImageNet-R / 10 mid-run) and 20
      (ImageNet-R / 20 at its end).
    """
    return {
        "demo": lambda: replace(demo_case(), branches=(0, 4), repeats=7),
        "tiny64": lambda: Case(
            "tiny64", "vit_tiny_patch16_224", {"img_size": 64}, batch_size=32, rank=10, classes=10, steps=1, epochs=20
        ),
        "base224": lambda: Case(
            "base224",
            "vit_base_patch16_224",
            {"img_size": 224},
            batch_size=1,
            rank=10,
            classes=20,
            steps=1,
            epochs=50,
            branches=(5, 20),
            repeats=5,
        ),
    }


@dataclass(frozen=True)
class TaskShape:
    """The size of one task of a benchmark protocol, for ``--full-task``."""

    images: int
    epochs: int
    batch_size: int
    classes: int
    frozen: int
    num_tasks: int
    source: str


TASK_SHAPES = {
    "demo": TaskShape(226, 10, 64, 2, 4, 5, "configs/demo.yaml: digits, 5 tasks, ~226 training images per task, 10 epochs"),
    "cifar100": TaskShape(5000, 20, 128, 10, 5, 10, "CIFAR-100 / 10 tasks: 5,000 training images per task, 20 epochs"),
    "imagenet-r": TaskShape(2400, 50, 128, 20, 5, 10, "ImageNet-R / 10 tasks: 24,000 training images (80 %) / 10, 50 epochs"),
}


# --------------------------------------------------------------------- the networks
class FloorNet(nn.Module):
    """The floor: frozen timm ViT + trainable head + a trainable zero scalar on one ``qkv`` output.

    The scalar makes autograd carry activation gradients from the loss down to
    the output of ``backbone.blocks[first_block].attn.qkv`` — no further, and with
    no weight gradient of the frozen backbone — which is what any LoRA method on
    the ``qkv`` projections of blocks ``first_block…`` must compute at least.

    Args:
        backbone: headless timm ViT (frozen; may share weights with other nets).
        first_block: index of the first adapted block.
        head: name of the head (the same as the compared InfLoRA session's).
        num_classes: classes of the head.
        generator: RNG of the head's initialisation.
    """

    def __init__(self, backbone: nn.Module, first_block: int, head: str, num_classes: int, generator: torch.Generator) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.heads = TaskHeads(backbone.num_features)  # type: ignore[arg-type]
        self.heads.add(head, num_classes, generator=generator).requires_grad_(True)
        self.qkv_shift = nn.Parameter(torch.zeros(()))
        backbone.blocks[first_block].attn.qkv.register_forward_hook(self._shift)  # type: ignore[index,union-attr]

    def _shift(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
        return output + self.qkv_shift

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor, heads: list[str] | None = None) -> Tensor:
        return self.heads(self.backbone(x), heads)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


@dataclass
class Subject:
    """A network under test, with what :func:`train_session` needs to train it."""

    net: nn.Module
    params: list[nn.Parameter]
    head: str
    class_offset: int


def shared_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module``'s structure whose parameters and buffers are the same tensors."""
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo)


def build_backbone(case: Case, device: torch.device) -> nn.Module:
    """The case's timm ViT with random weights (timing does not depend on them), on ``device``."""
    return create_backbone(case.model, pretrained=False, overrides=case.overrides).to(device)


def network_at_session(
    backbone: nn.Module, case: Case, sessions_done: int, generator: torch.Generator
) -> tuple[ContinualViT, ContinualMethod]:
    """A ContinualViT after ``sessions_done`` sessions: that many frozen branches (and heads).

    The frozen branches have random orthonormal ``down`` and random ``up`` rows:
    the values do not change the cost.
    """
    net = ContinualViT(shared_copy(backbone), case.lora_blocks)
    method = create_method("inflora", InfLoRAConfig(rank=case.rank, blocks=case.lora_blocks))
    for session in range(sessions_done):
        ctx = session_context(method, net, session, case.classes, [])
        ctx.save("design", method.random_downs(net, generator))
        method.begin_session(net, ctx)
        with torch.no_grad():
            for layer in net.lora_layers.values():
                branch = layer.branches[method.branch_name(session)]
                branch.up_k.normal_(0.0, 0.02, generator=generator)  # type: ignore[union-attr]
                branch.up_v.normal_(0.0, 0.02, generator=generator)  # type: ignore[union-attr]
    net.freeze_all()
    return net, method


def session_context(method: ContinualMethod, net: ContinualViT, session: int, classes: int, batches: list) -> InMemoryContext:
    """An in-memory step context whose network is ``net`` itself, positioned at ``session``."""
    ctx = InMemoryContext(method, net.backbone, [batches] * (session + 1), [classes] * (session + 1), TrainSpec())
    ctx.session, ctx.tasks = session, [session]
    ctx.build_net = lambda sessions_done: net  # type: ignore[method-assign]
    if session > 0:
        ctx.store[("memory", session - 1)] = memory_bank_state({})  # designs without a memory
    return ctx


def build_inflora(backbone: nn.Module, case: Case, n_frozen: int, device: torch.device, seed: int = 0) -> Subject:
    """A ContinualViT in session ``n_frozen``, its current branch and head trainable (``begin_session``)."""
    gen = torch.Generator().manual_seed(seed)
    net, method = network_at_session(backbone, case, n_frozen, gen)
    ctx = session_context(method, net, n_frozen, case.classes, [])
    ctx.save("design", method.random_downs(net, gen))
    params = method.begin_session(net, ctx)
    net.to(device)
    return Subject(net, params, head_name(n_frozen), n_frozen * case.classes)


def build_floor(backbone: nn.Module, case: Case, n_frozen: int, device: torch.device, seed: int = 0) -> Subject:
    from model.net import resolve_lora_blocks

    first = resolve_lora_blocks(len(backbone.blocks), case.lora_blocks)[0]  # type: ignore[arg-type]
    floor = FloorNet(shared_copy(backbone), first, head_name(n_frozen), case.classes, torch.Generator().manual_seed(seed))
    floor.to(device)
    return Subject(floor, floor.trainable(), head_name(n_frozen), n_frozen * case.classes)


def synthetic_batches(
    images: int, batch_size: int, case: Case, class_offset: int, device: torch.device, seed: int = 0
) -> list[tuple[Tensor, Tensor]]:
    """``images`` random images in batches (the last one partial), already on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, images, batch_size):
        n = min(batch_size, images - start)
        x = torch.rand(n, case.in_chans, case.img_size, case.img_size, generator=gen)
        y = class_offset + torch.randint(case.classes, (n,), generator=gen)
        batches.append((x.to(device), y.to(device)))
    return batches


# ------------------------------------------------------------------------ timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Clock = Callable[[], float]


def pick_clock(device: torch.device, name: str = "auto") -> tuple[Clock, str]:
    """``time.process_time`` (CPU seconds of this process) or ``time.perf_counter`` (wall).

    On a CPU shared with other jobs the process's CPU time does not count the
    time it waits to be scheduled, so it is far less noisy than wall time; on a
    GPU the host mostly waits for the device, so wall time (after a sync) is used.
    """
    if name == "auto":
        name = "cpu" if device.type == "cpu" else "wall"
    if name == "cpu":
        return time.process_time, "process CPU time"
    if name == "wall":
        return time.perf_counter, "wall time"
    raise ValueError(f"clock must be 'auto', 'cpu' or 'wall', got {name!r}")


def time_train(
    subject: Subject,
    batches: list[tuple[Tensor, Tensor]],
    spec: TrainSpec,
    device: torch.device,
    clock: Clock = time.perf_counter,
) -> float:
    """Seconds of one :func:`train_session` epoch over ``batches`` (a fresh Adam each call)."""
    synchronize(device)
    start = clock()
    train_session(
        subject.net,  # type: ignore[arg-type]
        subject.params,
        batches,
        spec.model_copy(update={"epochs": 1}),
        head_names=[subject.head],
        class_offset=subject.class_offset,
        device=device,
    )
    synchronize(device)
    return clock() - start


def time_covariance(
    net: ContinualViT, batches: list[tuple[Tensor, Tensor]], device: torch.device, clock: Clock = time.perf_counter
) -> float:
    """Seconds of one :func:`collect_covariances` pass over ``batches``."""
    synchronize(device)
    start = clock()
    collect_covariances(net, batches, device)
    synchronize(device)
    return clock() - start


def cov_share(cov_s: float, epoch_s: float, epochs: int) -> float:
    """Share of one covariance pass in a task that makes two: ``cov / (E·epoch + 2·cov)``."""
    return cov_s / (epochs * epoch_s + 2 * cov_s)


def measure_case(
    case: Case,
    device: torch.device,
    precision: str = "fp32",
    repeats: int = 3,
    clock: Clock = time.perf_counter,
    min_seconds: float = 0.0,
    log: Callable[[str], None] = lambda msg: None,
) -> list[dict[str, Any]]:
    """Step ratio and covariance share of ``case`` for each number of frozen branches.

    Order within a repeat: ``F, (I_n, C_n, F) for n in branches`` (the branch
    order reversed on odd repeats); each ``I_n`` is divided by the mean of its
    two neighbouring floor timings ``F``.

    Args:
        min_seconds: cycle the ``case.steps`` batches until a floor call lasts
            about this long (measured after the warm-up), to beat timer noise.

    Returns:
        One row per number of frozen branches (medians over repeats, img/s and ratios).
    """
    spec = TrainSpec(lr=5e-4, batch_size=case.batch_size, precision=precision)
    backbone = build_backbone(case, device)
    subjects: dict[int, tuple[Subject, Subject]] = {}
    batches: dict[int, list[tuple[Tensor, Tensor]]] = {}
    cycles = 1
    for n in case.branches:
        inflora = build_inflora(backbone, case, n, device)
        subjects[n] = (build_floor(backbone, case, n, device), inflora)
        batches[n] = synthetic_batches(case.steps * case.batch_size, case.batch_size, case, n * case.classes, device, seed=n)
        # warm-up (allocator, kernels, autotuning, the frozen-weight cache): untimed
        for s in subjects[n]:
            time_train(s, batches[n], spec, device)
        time_covariance(inflora.net, batches[n], device)  # type: ignore[arg-type]
        if n == case.branches[0] and min_seconds > 0:
            once = time_train(subjects[n][0], batches[n], spec, device, clock)
            cycles = max(1, math.ceil(min_seconds / max(once, 1e-6)))
    batches = {n: b * cycles for n, b in batches.items()}
    images = cycles * case.steps * case.batch_size

    samples: dict[int, list[dict[str, float]]] = {n: [] for n in case.branches}
    for r in range(repeats):
        order = list(case.branches) if r % 2 == 0 else list(reversed(case.branches))
        floor_before = time_train(subjects[order[0]][0], batches[order[0]], spec, device, clock)
        for n in order:
            floor, inflora = subjects[n]
            t: dict[str, float] = {"inflora": time_train(inflora, batches[n], spec, device, clock)}
            t["cov"] = time_covariance(inflora.net, batches[n], device, clock)  # type: ignore[arg-type]
            floor_after = time_train(floor, batches[n], spec, device, clock)
            t["floor"] = 0.5 * (floor_before + floor_after)
            floor_before = floor_after
            samples[n].append(t)
            log(
                f"  [{case.name}] repeat {r + 1}/{repeats}, {n:2d} frozen: floor {t['floor']:.3f}s  inflora {t['inflora']:.3f}s"
                f"  cov {t['cov']:.3f}s  ratio {t['inflora'] / t['floor']:.3f}"
            )

    rows = []
    tokens = int(getattr(backbone.patch_embed, "num_patches", 0)) + int(getattr(backbone, "num_prefix_tokens", 1))
    for n in case.branches:
        ts = samples[n]

        def med(key: str, ts: list[dict[str, float]] = ts) -> float:
            return statistics.median(s[key] for s in ts)

        ratios = [s["inflora"] / s["floor"] for s in ts]
        row: dict[str, Any] = {
            "kind": "step",
            "case": case.name,
            "model": case.model,
            "img_size": case.img_size,
            "tokens": tokens,
            "embed_dim": int(backbone.num_features),  # type: ignore[arg-type]
            "depth": len(backbone.blocks),  # type: ignore[arg-type]
            "batch_size": case.batch_size,
            "rank": case.rank,
            "frozen_branches": n,
            "branch_rank_total": case.rank * (n + 1),
            "floor_img_s": images / med("floor"),
            "inflora_img_s": images / med("inflora"),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "cov_img_s": images / med("cov"),
            "cov_pass_per_epoch": statistics.median(s["cov"] / s["inflora"] for s in ts),
        }
        row["case_epochs"] = case.epochs
        row["cov_share_case_epochs"] = statistics.median(cov_share(s["cov"], s["inflora"], case.epochs) for s in ts)
        for epochs in PAPER_EPOCHS.values():
            row[f"cov_share_E{epochs}"] = statistics.median(cov_share(s["cov"], s["inflora"], epochs) for s in ts)
        row["repeats"] = repeats
        row["images_per_call"] = images
        rows.append(row)
    return rows


def run_full_task(
    case: Case,
    shape: TaskShape,
    device: torch.device,
    precision: str = "fp32",
    clock: Clock = time.perf_counter,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Design, train and memory-update one task of ``shape`` on synthetic images, each timed.

    The network is in session ``shape.frozen`` (that many frozen branches). The
    design runs without a memory (the projection onto an old memory costs one
    ``d × d`` product per layer, negligible next to the pass). One more
    covariance pass is timed on its own for the share.
    """
    case = replace(case, classes=shape.classes, batch_size=shape.batch_size)
    backbone = build_backbone(case, device)
    session = shape.frozen
    gen = torch.Generator().manual_seed(0)
    net, method = network_at_session(backbone, case, session, gen)
    net.to(device)
    batches = synthetic_batches(shape.images, shape.batch_size, case, session * case.classes, device)
    spec = TrainSpec(lr=5e-4, epochs=shape.epochs, batch_size=shape.batch_size, precision=precision)

    ctx = session_context(method, net, session, case.classes, batches)
    ctx.device, ctx.num_sessions = device, shape.num_tasks
    synchronize(device)
    t0 = clock()
    downs, _ = method.design(net, ctx)
    ctx.save("design", downs)
    synchronize(device)
    t1 = clock()
    params = method.begin_session(net, ctx)
    train_session(net, params, batches, spec, head_names=[head_name(session)], class_offset=session * case.classes, device=device)
    synchronize(device)
    t2 = clock()
    method.step_update(ctx)
    synchronize(device)
    t3 = clock()
    cov_s = time_covariance(net, batches, device, clock)
    design_s, train_s, update_s = t1 - t0, t2 - t1, t3 - t2
    total = design_s + train_s + update_s
    log(f"  full task: design {design_s:.2f}s, train {train_s:.2f}s, update {update_s:.2f}s, cov pass {cov_s:.2f}s")
    return {
        "kind": "full_task",
        "case": case.name,
        "model": case.model,
        "img_size": case.img_size,
        "batch_size": shape.batch_size,
        "rank": case.rank,
        "frozen_branches": shape.frozen,
        "task_images": shape.images,
        "task_epochs": shape.epochs,
        "design_s": design_s,
        "train_s": train_s,
        "update_s": update_s,
        "task_total_s": total,
        "cov_pass_s": cov_s,
        "train_img_s": shape.images * shape.epochs / train_s,
        "cov_share_task": cov_s / (train_s + 2 * cov_s),
        "design_update_share_task": (design_s + update_s) / total,
    }


# ------------------------------------------------------------------------ report
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} (CPU, {os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} (CPU, {os.cpu_count()} logical cores)"


def verdict(value: float, target: float, noise: float = 0.0) -> str:
    """``MET``/``MISSED`` for ``value ≤ target``, flagged ``(borderline)`` within ``noise`` of it."""
    word = "MET" if value <= target else "MISSED"
    return f"{word} (borderline)" if abs(value - target) <= noise else word


def _headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``HEADLINE_FROZEN`` row if measured, else the one with the most frozen branches."""
    exact = [r for r in rows if r["frozen_branches"] == HEADLINE_FROZEN]
    return exact[0] if exact else max(rows, key=lambda r: r["frozen_branches"])


def findings(step_rows: list[dict[str, Any]]) -> list[str]:
    """What dominates, read off the numbers of each case."""
    out = []
    for case in dict.fromkeys(r["case"] for r in step_rows):
        rows = sorted((r for r in step_rows if r["case"] == case), key=lambda r: r["frozen_branches"])
        first, last, head = rows[0], rows[-1], _headline(rows)
        d, rank = int(head["embed_dim"]), int(head["rank"])
        shown = list({id(r): r for r in (first, head, last)}.values())
        text = (
            f"**{case}** (d = {d}, rank {rank}): ratio "
            + ", ".join(f"{r['ratio']:.3f} with {int(r['frozen_branches'])} frozen branches" for r in shown)
            + f" (total branch rank at {int(last['frozen_branches'])}: {int(last['branch_rank_total'])} = "
            f"{last['branch_rank_total'] / d:.2f}·d)."
        )
        if len(rows) > 1:
            growth = last["ratio"] - first["ratio"]
            span = f"from {int(first['frozen_branches'])} to {int(last['frozen_branches'])} frozen branches"
            if abs(growth) <= RATIO_NOISE:
                text += (
                    f" The ratio changes by {growth:+.3f} {span}, within the ±{RATIO_NOISE} run-to-run spread: the frozen "
                    "branches are one cached dense `qkv` weight, one matmul whatever their number."
                )
            else:
                text += (
                    f" The ratio changes by {growth:+.3f} {span}, more than the ±{RATIO_NOISE} run-to-run spread: "
                    "the frozen branches are not free here (check the frozen-weight cache of `model/lora.py`)."
                )
        rest = statistics.median(r["ratio"] for r in rows) - 1
        text += f" What remains: the floor + {rest:.0%} (median of the rows)."
        out.append(text)
    if out:
        out.append(
            "What remains is the current, trainable branch in each wrapped layer: its rank-r products (down, up_k, "
            "up_v forward; their input and weight gradients backward), which run far below the dense `qkv` product's "
            "efficiency, and the assembly of q|k+Δk|v+Δv (one full-size concatenation forward, one in the split's "
            "backward, two adds). It is a fixed cost per layer, so it weighs most where the dense work per layer is "
            "small (few tokens, small d): see the module docstring for the per-layer numbers."
        )
    return out


def write_report(
    table: Any,
    command: str,
    device: torch.device,
    precision: str,
    threads: int,
    clock_name: str,
    load: tuple[float, float],
    out_dir: Path,
) -> str:
    """Write ``throughput.csv`` and ``throughput.md``; returns the markdown."""
    import timm

    out_dir.mkdir(parents=True, exist_ok=True)
    table = table.astype({c: "Int64" for c in INT_COLUMNS if c in table})  # step and task rows leave NaNs
    table.to_csv(out_dir / "throughput.csv", index=False)
    step = table[table["kind"] == "step"]
    full = table[table["kind"] == "full_task"]
    lines = [
        "# InfLoRA training throughput vs the LoRA floor, and the covariance share",
        "",
        f"Command: `{command}`",
        "",
        f"- device: {device_name(device)}; precision {precision}"
        + (
            f"; torch threads {threads}"
            if device.type == "cpu"
            else "; TF32 matmul " + str(torch.backends.cuda.matmul.allow_tf32)
        ),
        f"- torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}; timings in {clock_name}"
        + (" (img/s = images per CPU-second of this process)" if clock_name.startswith("process") else ""),
        (
            f"- load average at start / end: {load[0]:.1f} / {load[1]:.1f} (other jobs share the machine: ratios are "
            "per repeat, against the neighbouring floor timings, then the median)"
        ),
    ]
    if device.type != "cuda":
        ran = sorted({f"{r.case} ({r.model}, {r.img_size}², batch {r.batch_size})" for r in step.itertuples()})
        lines.append(
            f"- **No GPU on this machine**: everything ran on the CPU ({'; '.join(ran)}); the paper-scale GPU configuration "
            "(ViT-B/16 at 224², batch 128, bf16, and the full ImageNet-R-shaped task) was not run here. GPU command: see "
            "the module docstring of `benchmarks/throughput.py`."
        )
    lines += [
        "",
        (
            "Floor = the same frozen timm ViT with a trainable head and a trainable zero scalar on the first adapted "
            "`qkv` output, trained by the same `train_session` (see the docstring). Ratio = floor img/s ÷ InfLoRA img/s "
            f"(target ≤ {STEP_RATIO_TARGET}; within ±{RATIO_NOISE} of it: borderline, the run-to-run spread seen on a "
            "shared CPU). `model/lora.py` folds the frozen branches into one cached `qkv` weight; the per-layer "
            "breakdown of what remains is in the module docstring of `benchmarks/throughput.py`."
        ),
        "",
    ]
    if len(step):
        cols = [
            "case",
            "model",
            "img_size",
            "tokens",
            "embed_dim",
            "batch_size",
            "rank",
            "frozen_branches",
            "floor_img_s",
            "inflora_img_s",
            "ratio",
            "ratio_min",
            "ratio_max",
        ]
        view = step[cols].copy()
        view["verdict"] = [verdict(r, STEP_RATIO_TARGET, RATIO_NOISE) for r in view["ratio"]]
        lines += ["## Step ratio", "", view.round(3).to_markdown(index=False), ""]
        share_cols = ["case_epochs", "cov_share_case_epochs", *(f"cov_share_E{e}" for e in PAPER_EPOCHS.values())]
        sview = step[["case", "frozen_branches", "cov_img_s", "cov_pass_per_epoch", *share_cols]].copy()
        paper = [f"cov_share_E{e}" for e in PAPER_EPOCHS.values()]
        sview["verdict (paper epochs)"] = [verdict(max(r[c] for c in paper), COV_SHARE_TARGET) for _, r in sview.iterrows()]
        lines += [
            "## Covariance share",
            "",
            f"share = one pass ÷ (E epochs + 2 passes), per image on the same batches (target ≤ {COV_SHARE_TARGET:.0%}); "
            "`cov_pass_per_epoch` = one pass ÷ one training epoch; `cov_share_case_epochs` at the case's own "
            "`case_epochs` (demo: configs/demo.yaml); paper epochs "
            + ", ".join(f"{k} {v}" for k, v in PAPER_EPOCHS.items())
            + ".",
            "",
            sview.round(4).to_markdown(index=False),
            "",
        ]
    if len(full):
        fcols = [
            "case",
            "model",
            "img_size",
            "batch_size",
            "frozen_branches",
            "task_images",
            "task_epochs",
            "design_s",
            "train_s",
            "update_s",
            "task_total_s",
            "cov_pass_s",
            "train_img_s",
            "cov_share_task",
            "design_update_share_task",
        ]
        fview = full[fcols].copy()
        fview["verdict"] = [verdict(s, COV_SHARE_TARGET) for s in fview["cov_share_task"]]
        lines += [
            "## One full task (synthetic images)",
            "",
            "design = covariance pass + SVD per layer; update = covariance pass + memory update; data loading not included.",
            "",
            fview.round(3).to_markdown(index=False),
            "",
        ]
    if len(step):
        lines += ["## Verdicts and what dominates", ""]
        for case in dict.fromkeys(step["case"]):
            head = _headline(step[step["case"] == case].to_dict("records"))
            worst = max(head[f"cov_share_E{e}"] for e in PAPER_EPOCHS.values())
            own = head["cov_share_case_epochs"]
            lines.append(
                f"- {case}, {head['frozen_branches']} frozen branches: step ratio {head['ratio']:.3f} "
                f"→ **{verdict(head['ratio'], STEP_RATIO_TARGET, RATIO_NOISE)}** (≤ {STEP_RATIO_TARGET}); covariance share at "
                f"paper epochs ≤ {worst:.1%} → **{verdict(worst, COV_SHARE_TARGET)}** (≤ {COV_SHARE_TARGET:.0%}); at the case's own "
                f"{int(head['case_epochs'])} epochs {own:.1%}."
            )
        lines.append("")
        lines += [f"- {t}" for t in findings(step.to_dict("records"))]
        lines.append("")
    md = "\n".join(lines) + "\n"
    (out_dir / "throughput.md").write_text(md)
    return md


# --------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", choices=sorted(preset_cases()), help="CPU presets (default: all, unless --model)")
    parser.add_argument("--model", help="timm ViT name for a custom case, e.g. vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--classes", type=int, default=20, help="classes of the current head (ImageNet-R / 10: 20)")
    parser.add_argument("--steps", type=int, default=10, help="batches per timed call (custom case)")
    parser.add_argument("--epochs", type=int, default=50, help="epochs per task of the custom case (for its covariance share)")
    parser.add_argument("--branches", type=int, nargs="+", help=f"numbers of frozen branches (default {list(DEFAULT_BRANCHES)})")
    parser.add_argument("--lora-blocks", default="all", help="'all' or the number of first blocks (b5: 5)")
    parser.add_argument("--repeats", type=int, help="repeats of each measurement (default: the case's: 5, demo 7)")
    parser.add_argument(
        "--min-seconds", type=float, default=0.5, help="cycle a case's batches so that one timed call lasts about this long"
    )
    parser.add_argument(
        "--clock", choices=("auto", "cpu", "wall"), default="auto", help="auto: process CPU time on cpu, wall time on cuda"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1… (auto: cuda if available)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the cores are shared; 2 threads thrash)")
    parser.add_argument("--full-task", choices=("none", *TASK_SHAPES), help="time one whole task (default: demo on CPU presets)")
    parser.add_argument("--task-images", type=int, help="override the full task's number of training images")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--sd-lora-memory", type=int, nargs="+", metavar="TASKS",
                        help="only measure SD-LoRA's peak RSS in these tasks (e.g. 5 20); default model ViT-B/16 224², batch 8, 3 steps")
    args = parser.parse_args(argv)
    for key in ("batch_size", "rank", "classes", "steps", "epochs", "repeats", "threads"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.branches and min(args.branches) < 0:
        parser.error(f"--branches must be >= 0, got {args.branches}")
    if args.full_task in ("cifar100", "imagenet-r") and not args.model:
        parser.error(f"--full-task {args.full_task} needs --model (the ViT-B/16 GPU configuration); CPU presets support 'demo'")
    return args


def sd_lora_peak_rss(tasks: int, model: str, img_size: int, batch_size: int, steps: int, rank: int = 10) -> dict[str, float]:
    """Peak RSS (MiB) of SD-LoRA training in task ``tasks`` (``tasks - 1`` old branches with trainable magnitudes).

    Runs in its own process (the peak resident set of a process cannot be reset):
    builds the network with the old branches, starts the session with the
    method's own ``begin_session`` and trains ``steps`` batches.
    """
    import resource

    from model.methods.sd_lora import SDLoRAViT

    torch.set_num_threads(1)
    method = create_method("sd_lora", SDLoRAConfig(rank=rank))
    backbone = create_backbone(model, pretrained=False, overrides={"img_size": img_size})
    net = method.build_net(backbone)
    assert isinstance(net, SDLoRAViT)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in range(tasks - 1):
            net.add_task_branch(method.branch_name(t), 0.8)
            for layer in net.lora_layers.values():
                for target in net.targets:
                    branch = layer.branches[method.branch_name(t)]
                    branch.down(target).normal_(0, 0.02, generator=gen)
                    branch.up(target).normal_(0, 0.02, generator=gen)
    ctx = session_context(method, net, tasks - 1, 20, [])
    params = method.begin_session(net, ctx)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    batches = [(torch.randn(batch_size, 3, img_size, img_size, generator=gen), torch.randint(0, 20, (batch_size,), generator=gen) + 20 * (tasks - 1))
               for _ in range(steps)]
    spec = TrainSpec(optimizer="sgd", scheduler="constant", lr=1e-2, epochs=1, batch_size=batch_size)
    train_session(net, params, batches, spec, head_names=[head_name(tasks - 1)], class_offset=20 * (tasks - 1), device=torch.device("cpu"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tasks": tasks, "old_branches": tasks - 1, "trainable_params": sum(p.numel() for p in params),
            "rss_before_training_mb": before, "peak_rss_mb": peak}


def sd_lora_memory(tasks: Sequence[int], model: str, img_size: int, batch_size: int, steps: int, out_dir: Path) -> None:
    """Peak RSS of SD-LoRA training at each number of tasks, each in a fresh process; writes a table."""
    import json as _json
    import subprocess

    import pandas as pd

    rows = []
    for n in tasks:
        code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.throughput import sd_lora_peak_rss; "
                f"print(json.dumps(sd_lora_peak_rss({n}, {model!r}, {img_size}, {batch_size}, {steps})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
        rows.append(_json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    command = f"python benchmarks/throughput.py --sd-lora-memory {' '.join(map(str, tasks))} --model {model} --img-size {img_size} --batch-size {batch_size} --steps {steps}"
    lines = [
        "# SD-LoRA peak memory (CPU RSS) against the number of tasks",
        "",
        f"Command: `{command}` (each row in a fresh process; one torch thread; SGD on the new factors, every magnitude and the head).",
        "",
        table.to_markdown(index=False, floatfmt=".1f"),
        "",
        "Old branches enter training as frozen directions with trainable magnitudes: one concatenated low-rank "
        "product per target (``model/lora.py: LoRAQKV._branch_sum``), so their activations grow with tasks × rank, "
        "not with tasks × width.",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sd_lora_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import pandas as pd

    if args.sd_lora_memory:
        sd_lora_memory(args.sd_lora_memory, args.model or "vit_base_patch16_224", args.img_size,
                       args.batch_size if args.model else 8, args.steps if args.model else 3, args.out_dir)
        return

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    torch.set_num_threads(args.threads)
    clock, clock_name = pick_clock(device, args.clock)

    def log(msg: str) -> None:
        print(msg, flush=True)

    lora_blocks: str | int = int(args.lora_blocks) if args.lora_blocks.isdigit() else args.lora_blocks
    if args.model:
        cases = [
            Case(
                f"{args.model}@{args.img_size}",
                args.model,
                {"img_size": args.img_size},
                args.batch_size,
                args.rank,
                args.classes,
                args.steps,
                args.epochs,
                tuple(args.branches or DEFAULT_BRANCHES),
                lora_blocks,
            )
        ]
    else:
        presets = preset_cases()
        cases = [presets[name]() for name in (args.preset or presets)]
        if args.branches:
            cases = [replace(c, branches=tuple(args.branches)) for c in cases]
    full_task = args.full_task or ("demo" if not args.model else "none")
    command = "python benchmarks/throughput.py" + (
        "" if not argv and len(sys.argv) < 2 else " " + shlex.join(argv or sys.argv[1:])
    )

    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for case in cases:
        log(
            f"{case.name}: {case.model} {case.overrides}, batch {case.batch_size}, rank {case.rank}, frozen {list(case.branches)}"
        )
        rows += measure_case(
            case,
            device,
            precision,
            args.repeats or case.repeats,
            clock=clock,
            min_seconds=args.min_seconds,
            log=log,
        )
    if full_task != "none":
        shape = TASK_SHAPES[full_task]
        if args.task_images:
            shape = replace(shape, images=args.task_images)
        base = demo_case() if full_task == "demo" else cases[0]
        log(f"full task '{full_task}' on {base.name}: {shape.source}")
        rows.append(run_full_task(base, shape, device, precision, clock=clock, log=log))
    table = pd.DataFrame(rows)
    md = write_report(table, command, device, precision, args.threads, clock_name, (load_start, os.getloadavg()[0]), args.out_dir)
    print(md)
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
