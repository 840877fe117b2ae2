"""What a paper-scale run costs besides the model: the host's share, measured on the CPU, old path against new.

The paper config (``configs/paper/imagenet_r_10.yaml``) runs through the real
stages (:func:`pipeline.running.runner.execute`, in-process executor, MLflow logging to
a local SQLite store) on generated ImageNet-R-shaped JPEGs (300–700 px sides,
about 80 kB each; :func:`benchmarks.harness.write_jpeg_folder`), with only the
backbone swapped for a ViT so small that its compute is negligible (one block,
width 16, patch 16 at 224²). What the stages then spend is what is not the
model's: decoding and augmenting, the covariance passes, evaluation, stage
starts, checkpoints, logging.

For each data path (``data.pipeline: pil``, the reference's; ``device``, decode
once and augment batches on the device) it runs the sequence twice, with
``--epochs`` 1 and 1 + ``--extra-epochs``, and reads:

* **host CPU per training image** (target ≤ 1 ms), two ways: the host's share
  of a GPU run, timed on the loader alone (:func:`host_cpu_per_image`), and the
  difference of the two runs' train-stage CPU time (process and DataLoader
  workers) per extra training image, every fixed cost cancelled;
* **per task and stage**: CPU and wall seconds of every stage of the longer
  run (design = covariance pass + SVD, train, update = covariance pass, eval),
  and the rest of the run's wall time (stage starts, logging), projected to
  ImageNet-R at paper scale (2,400 training images per task, 50 epochs, 600
  test images per task seen).

The device cache is built before the timed runs; its one-off cost per image is
reported on its own. On the CPU the "device" is the CPU itself, so the device
path's resize runs on the host here: the host CPU it reports is an upper bound
of what a GPU run leaves on the host.

Usage::

    python -m benchmarks.paper_scale
    python -m benchmarks.paper_scale --classes 20 --per-class 10 --extra-epochs 1   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.harness import RESULTS, ROOT, command_line, cpu_seconds, device_name, write_jpeg_folder

__all__ = ["TINY_VIT", "IMAGENET_R_TASK", "paper_config", "measure_path", "main"]

TINY_VIT = {"img_size": 224, "patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 1}
"""A ViT whose compute is negligible next to the data path: one block of width 16 on 196 patches."""

IMAGENET_R_TASK = {"train_images": 2400, "epochs": 50, "test_images_seen_mean": 600 * 5.5, "tasks": 10}
"""ImageNet-R / 10 tasks at paper scale: 24,000 training images (80 %), 50 epochs; session t evaluates t + 1 tasks of 600."""

CPU_PER_IMAGE_TARGET_MS = 1.0


def paper_config(data_root: Path, checkpoint: Path, out: Path, pipeline: str, epochs: int, tasks: int, workers: int):
    """``configs/paper/imagenet_r_10.yaml`` on ``data_root``'s images, with the negligible backbone."""
    from pipeline.config import load_config

    return load_config(ROOT / "configs" / "paper" / "imagenet_r_10.yaml", [
        "seeds=[0]", f"output_dir={out}", "backbone.name=vit_tiny_patch16_224", "backbone.pretrained=false",
        f"backbone.checkpoint={checkpoint}", f"backbone.overrides={json.dumps(TINY_VIT)}",
        "data.name=image_folder", f"data.root={data_root}", f"data.num_tasks={tasks}", f"data.num_workers={workers}",
        f"data.pipeline={pipeline}", f"data.cache_dir={out.parent / 'cache'}", f"train.epochs={epochs}",
        "resources.executor=local", "resources.cpus_per_stage=1", "resources.gpus_per_stage=0",
        f"tracking.uri=sqlite:///{out / 'mlflow.db'}",
    ])  # fmt: skip


@contextlib.contextmanager
def stage_clock(rows: list[dict[str, Any]]) -> Iterator[None]:
    """Record CPU and wall seconds of every stage the in-process executor runs."""
    import pipeline.running.scheduler as scheduler

    original = scheduler.run_stage

    def timed(spec, key, *upstream):
        cpu, wall = cpu_seconds(), time.perf_counter()
        try:
            return original(spec, key, *upstream)
        finally:
            rows.append({"session": key.session, "stage": key.stage, "cpu_s": cpu_seconds() - cpu, "wall_s": time.perf_counter() - wall})

    scheduler.run_stage = timed
    try:
        yield
    finally:
        scheduler.run_stage = original


def run_once(cfg) -> tuple[float, float, list[dict[str, Any]]]:
    """CPU and wall seconds of one whole run, and its per-stage rows."""
    from pipeline.running.runner import execute, make_specs

    rows: list[dict[str, Any]] = []
    cpu, wall = cpu_seconds(), time.perf_counter()
    with stage_clock(rows):
        (outcome,) = execute(make_specs(cfg), progress=False)
    if outcome.status != "FINISHED":
        raise RuntimeError(f"the {cfg.data.pipeline} run ended {outcome.status}")
    return cpu_seconds() - cpu, time.perf_counter() - wall, rows


def build_cache(cfg) -> dict[str, float]:
    """Build the device path's caches of every pool; seconds and CPU per image."""
    from pipeline.data import load_dataset
    from pipeline.data.decoded import decoded_eval, decoded_train

    source = load_dataset(cfg.data)
    cpu, wall = cpu_seconds(), time.perf_counter()
    decoded_train(source.train, cfg.data.cache_dir, cfg.data.cache_max_side)
    decoded_eval(source.measure_pool, cfg.data.cache_dir, cfg.data.image_size, source.images.resize_ratio, source.images.interpolation)
    n = len(source.train)
    return {"images": n, "cache_cpu_ms_per_image": 1e3 * (cpu_seconds() - cpu) / n, "cache_wall_s": time.perf_counter() - wall}


def host_cpu_per_image(cfg, repeats: int = 2) -> float:
    """ms of host CPU per training image that a GPU run leaves on the host, in one process (no workers).

    PIL path: the loader's whole work (decode, crop, resize, flip, tensor,
    normalise, collate). Device path: the worker's work (draw boxes, copy the
    boxes' pixels out of the cache) plus the main process's dispatch of the
    device operations, measured on PyTorch's ``meta`` device, which runs the
    dispatch and shape logic of every operation but computes nothing (a CUDA
    launch adds a few µs per kernel on top).
    """
    import torch

    from pipeline.data import load_dataset, make_loader
    from pipeline.data.device_loader import device_batches

    source = load_dataset(cfg.data)
    indices = list(range(len(source.train)))
    labels = {int(t): int(t) for t in source.train_targets}
    if cfg.data.pipeline == "device":
        batches = device_batches(source.train, source.images, indices, labels, cfg.train.batch_size, train=True,
                                 device=torch.device("meta"), generator=torch.Generator().manual_seed(0),
                                 cache_dir=cfg.data.cache_dir, max_side=cfg.data.cache_max_side)
    else:
        batches = make_loader(source.train, indices, labels, cfg.train.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in batches:  # warm: page cache, lazy imports
            break
        start = time.process_time()
        for _ in range(repeats):
            for _ in batches:
                pass
        return 1e3 * (time.process_time() - start) / (repeats * len(indices))
    finally:
        torch.set_num_threads(threads)


def measure_path(pipeline: str, work: Path, data_root: Path, checkpoint: Path, args) -> dict[str, Any]:
    """Both runs of one data path: CPU per training image and the longer run's stages."""
    runs = {}
    for epochs in (1, 1 + args.extra_epochs):
        out = work / f"{pipeline}_e{epochs}"
        cfg = paper_config(data_root, checkpoint, out, pipeline, epochs, args.tasks, args.workers)
        if pipeline == "device" and "cache" not in runs:
            runs["cache"] = build_cache(cfg)
        runs[epochs] = (*run_once(cfg), cfg)
    (_, _, stages1, _), (cpu2, wall2, stages, cfg) = runs[1], runs[1 + args.extra_epochs]
    train_cpu = [sum(r["cpu_s"] for r in rows if r["stage"] == "train") for rows in (stages1, stages)]
    split = json.loads(next((work / f"{pipeline}_e{1 + args.extra_epochs}").rglob("split.json")).read_text())
    train_images = sum(len(t) for t in split["train"])
    test_images = [len(t) for t in split["test"]]
    return {
        "pipeline": pipeline, "train_images": train_images, "test_images": test_images, "tasks": args.tasks,
        "epochs": 1 + args.extra_epochs,
        "cpu_ms_per_train_image": 1e3 * (train_cpu[1] - train_cpu[0]) / (args.extra_epochs * train_images),
        "host_ms_per_train_image": host_cpu_per_image(cfg), "run_cpu_s": cpu2, "run_wall_s": wall2, "stages": stages,
        **runs.get("cache", {}),
    }  # fmt: skip


def per_task(result: dict[str, Any]) -> pd.DataFrame:
    """Stage CPU seconds per task, and the same projected to ImageNet-R at paper scale."""
    stages = pd.DataFrame(result["stages"])
    stages = stages[stages["stage"] != "split"]
    train_per_task = result["train_images"] / result["tasks"]
    scale = {  # images each stage handles, here and at paper scale
        "design": (train_per_task, IMAGENET_R_TASK["train_images"]),
        "update": (train_per_task, IMAGENET_R_TASK["train_images"]),
        "train": (train_per_task * result["epochs"], IMAGENET_R_TASK["train_images"] * IMAGENET_R_TASK["epochs"]),
        "eval": (sum(result["test_images"]) * (result["tasks"] + 1) / 2 / result["tasks"], IMAGENET_R_TASK["test_images_seen_mean"]),
    }
    table = stages.groupby("stage")[["cpu_s", "wall_s"]].sum() / result["tasks"]
    table["images"] = [scale[s][0] for s in table.index]
    table["cpu_ms_per_image"] = 1e3 * table["cpu_s"] / table["images"]
    # design, update, eval: the stage's fixed cost counted per image (an upper bound at paper scale);
    # train: its fixed cost once plus the marginal cost of one more epoch per image
    table["paper_scale_cpu_s"] = table["cpu_ms_per_image"] * [scale[s][1] for s in table.index] / 1e3
    marginal = result["cpu_ms_per_train_image"] / 1e3
    fixed = table.loc["train", "cpu_s"] - marginal * table.loc["train", "images"]
    table.loc["train", "paper_scale_cpu_s"] = fixed + marginal * scale["train"][1]
    rest = (result["run_wall_s"] - stages["wall_s"].sum()) / result["tasks"]
    table.loc["outside stages (start, logging)"] = [float("nan"), rest, float("nan"), float("nan"), rest]
    return table


def write_report(results: list[dict[str, Any]], args, command: str, out: Path) -> str:
    summary = pd.DataFrame([{k: v for k, v in r.items() if k not in ("stages", "test_images")} for r in results]).set_index("pipeline")
    base = summary.loc["pil", "host_ms_per_train_image"] if "pil" in summary.index else float("nan")
    lines = [
        "# Paper scale on the CPU: what the stages spend besides the model",
        "",
        f"Command: `{command}`; {device_name(__import__('torch').device('cpu'))}; load average before/after "
        f"{args.load[0]:.1f}/{os.getloadavg()[0]:.1f}. Generated ImageNet-R-shaped JPEGs ({args.classes} classes × {args.per_class}, "
        f"sides 300–700 px, {args.mean_kb:.0f} kB mean), `configs/paper/imagenet_r_10.yaml` with {args.tasks} tasks, "
        f"{args.workers} DataLoader workers, one torch thread, the backbone swapped for a negligible ViT ({TINY_VIT}).",
        "",
        "## Host CPU per training image",
        "",
        "*host share*: what a GPU run leaves on the host per image (one process, one thread; the device path's "
        "device operations dispatched on PyTorch's `meta` device, computing nothing). *train stage, one more epoch*: "
        "the difference of the train stages' CPU time (process and workers) between the two runs, per extra training "
        "image; on this CPU-only machine the device is the CPU, so the device path's resize is in it.",
        "",
        "| data path | host share, ms CPU per image | vs PIL | target ≤ 1 ms | train stage, one more epoch, ms CPU per image (device = CPU) |",
        "|:--|--:|--:|:--|--:|",
    ]
    for name, row in summary.iterrows():
        ms = row["host_ms_per_train_image"]
        lines.append(f"| {name} | {ms:.3f} | {ms / base:.3f}× | {'MET' if ms <= CPU_PER_IMAGE_TARGET_MS else 'MISSED'} "
                     f"| {row['cpu_ms_per_train_image']:.2f} |")
    if "cache_cpu_ms_per_image" in summary.columns and summary["cache_cpu_ms_per_image"].notna().any():
        row = summary.loc["device"]
        lines += ["", f"The device path's cache, built once per node before the timed runs: {row['cache_cpu_ms_per_image']:.2f} ms CPU "
                  f"per image ({int(row['images'])} images, {row['cache_wall_s']:.1f} s wall)."]
    for r in results:
        table = per_task(r)
        lines += [
            "",
            f"## Per task, `{r['pipeline']}` path ({r['epochs']} epochs, {r['train_images'] // r['tasks']} training images per task)",
            "",
            "CPU and wall seconds per task here (DataLoader workers included; the machine's load stretches the wall "
            "times). `paper_scale_cpu_s`: projected to ImageNet-R / 10 (2,400 training images × 50 epochs, two covariance "
            "passes over them, 3,300 test images per evaluation on average): train = its fixed cost here + the marginal "
            "CPU of one more epoch per image; design, update and eval = CPU per image here, fixed costs included "
            "(an upper bound).",
            "",
            table.round(3).to_markdown(),
        ]
    lines += ["", "## Projection to a GPU run of ImageNet-R / 10", ""]
    for name, row in summary.iterrows():
        lines.append(f"- `{name}`: host CPU of a GPU run's training per task at paper scale: "
                     f"{row['host_ms_per_train_image'] * 120:.0f} s (host share × 120,000 images).")
    lines += [
        "",
        "The GPU side is not measured here (no GPU was lent). The model's time per task is "
        "2,400 × 50 / (images/s of `benchmarks/gpu_check.sh`); the non-model time per task is what the table's "
        "CPU rows leave on the host, spread over the node's cores (DataLoader workers run while the GPU computes).",
    ]
    md = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper_scale.md").write_text(md)
    rows = [{**{k: v for k, v in r.items() if k != "stages"}, "test_images": sum(r["test_images"])} for r in results]
    pd.DataFrame(rows).to_csv(out / "paper_scale.csv", index=False)
    return md


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=40, help="classes (20 per task, as ImageNet-R / 10)")
    parser.add_argument("--per-class", type=int, default=15, help="images per class")
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--extra-epochs", type=int, default=2, help="epochs the longer run adds")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (the paper config has 8)")
    parser.add_argument("--pipelines", nargs="+", default=["pil", "device"], choices=["pil", "device"])
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--workdir", type=Path, default=None, help="where the images and runs go (a temporary folder by default)")
    args = parser.parse_args(argv)
    for key in ("classes", "per_class", "tasks", "extra_epochs"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    args.load = os.getloadavg()
    import torch

    from model.backbone import create_backbone, save_backbone

    work = Path(tempfile.mkdtemp(prefix="paper_scale_", dir=args.workdir))
    try:
        data_root = write_jpeg_folder(work / "images", args.classes, args.per_class)
        sizes = [p.stat().st_size for p in data_root.rglob("*.jpg")]
        args.mean_kb = sum(sizes) / len(sizes) / 1e3
        checkpoint = work / "tiny.safetensors"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            save_backbone(create_backbone("vit_tiny_patch16_224", pretrained=False, overrides=TINY_VIT), checkpoint)
        results = [measure_path(p, work, data_root, checkpoint, args) for p in args.pipelines]
        print(write_report(results, args, command_line(argv), args.out_dir))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
