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
   What remains over the floor is the current branch in every wrapped layer
   (its cost per layer, measured separately: README, "Benchmarks").

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

    python -m benchmarks.throughput                 # CPU presets
    python -m benchmarks.throughput --model vit_base_patch16_224 --img-size 224 \\
        --batch-size 128 --steps 10 --device cuda --precision bf16 --full-task imagenet-r

The second is the paper-scale GPU configuration (ViT-B/16, 224², batch 128,
bf16; 0/1/5/10/20 frozen branches; one ImageNet-R-shaped task of 2,400 images
× 50 epochs); ``--precision fp32`` matches the paper configs (configs/paper/).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import RESULTS, device_name, pick_clock, verdict
from benchmarks.step_cost import (
    COV_SHARE_TARGET, DEFAULT_BRANCHES, HEADLINE_FROZEN, INT_COLUMNS, PAPER_EPOCHS, RATIO_NOISE, STEP_RATIO_TARGET, TASK_SHAPES,
    Case, demo_case, measure_case, preset_cases, run_full_task,
)  # fmt: skip

__all__ = ["findings", "write_report", "parse_args", "main"]


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
            "breakdown of what remains is in the README (\"Benchmarks\", throughput)."
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
    args = parser.parse_args(argv)
    for key in ("batch_size", "rank", "classes", "steps", "epochs", "repeats", "threads"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.branches and min(args.branches) < 0:
        parser.error(f"--branches must be >= 0, got {args.branches}")
    if args.full_task in ("cifar100", "imagenet-r") and not args.model:
        parser.error(f"--full-task {args.full_task} needs --model (the ViT-B/16 GPU configuration); CPU presets support 'demo'")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import pandas as pd

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
    command = "python -m benchmarks.throughput" + (
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
