"""The measuring functions of the throughput benchmark (``benchmarks/throughput.py``), as a library.

Cases (architectures and batches), the InfLoRA subject and the floor it is
compared with, synthetic batches, and the timers of a training step, of a
covariance pass and of one whole task. ``benchmarks/throughput.py`` turns their
rows into its report; ``benchmarks/gpu_check.py`` reuses them on a GPU. What
each measurement means is in ``benchmarks/throughput.py``'s docstring; what it
measured is in ``benchmarks/results/throughput.md``.
"""
from __future__ import annotations

import copy
import itertools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from model import ContinualViT, TaskHeads, create_backbone, create_method, head_name
from model.methods import ContinualMethod
from model.methods.inflora import InfLoRAConfig
from model.methods.memory_context import InMemoryContext
from model.subspace import memory_bank_state
from model.training import TrainSpec, collect_covariances, train_session

from benchmarks.harness import ROOT, Clock, synchronize

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
