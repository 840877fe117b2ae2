"""GPU check: InfLoRA's training step at paper scale, and the real stages on one GPU.

Run by ``benchmarks/gpu_check.sh`` (one GPU, a time limit the script enforces). Everything uses
random weights (no hub) and synthetic images; the numbers are costs, not accuracies.

1. **Step throughput** — ViT-B/16 at 224², batch 128, bf16 autocast, images/s of

   * *timm floor*: timm's own forward + backward of the frozen backbone, carried
     down to the first adapted ``qkv`` output (``FloorNet`` of
     ``benchmarks/step_cost.py``: what any LoRA method on ``qkv`` must compute);
   * *InfLoRA*: a :class:`~model.net.ContinualViT` in session 5 (5 frozen
     branches, the current one trainable) trained by
     :func:`model.training.train_session`, eager and with ``train.compile: true``
     (``torch.compile``, its compilation excluded by a warm-up call);

   each with its peak allocated GPU memory.

2. **Real stages** — a 10-task ImageNet-R-shaped sequence (JPEGs of 300–700 px
   generated on the machine, in an ``image_folder`` flat layout, 20 classes per
   task, the held-out test drawn by ``data.split_seed``, ``data.pipeline:
   device``) through :func:`pipeline.running.runner.execute` on Ray, with few epochs:
   ``resources.gpus_per_stage`` 1, 0.5 and 0.25 with 1, 2 and 4 runs at once;
   wall time and seconds per task, the aggregate training images/s, the
   projection of one seed to the paper's 50 epochs, the device every stage ran
   on (its done marker), and the peak GPU memory in use on the device (all
   processes: ``torch.cuda.mem_get_info`` polled by the driver), minus what was
   in use before.

Writes ``benchmarks/results/gpu_check.md`` (``--out`` elsewhere). ``--cpu-smoke``
shrinks every part to a tiny ViT on the CPU (2 tasks, 1 and 2 runs, the
in-process executor, no ``torch.compile`` row: inductor's CPU compilation alone
would take longer than the rest) to test the script itself; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import ROOT, device_name, synchronize, write_jpeg_folder
from benchmarks.step_cost import Case, build_backbone, build_floor, build_inflora, synthetic_batches
from model.evaluation import peak_memory_mb, reset_peak_memory
from model.training import TrainSpec, train_session

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_check.md"
PAPER_EPOCHS = 50
OFFICIAL_SEED_S = 130 * 60
"""The official code's ImageNet-R seed (its log ``logs/ImageNet_R/20_20_sip/InfLoRA/adam/10/0.98_1.0-0.0005/0.log``)."""


@dataclass(frozen=True)
class Settings:
    """Sizes of one check (the GPU defaults, or the CPU smoke)."""

    case: Case
    frozen: int  # frozen branches of the measured InfLoRA session
    pipe_tasks: int
    pipe_classes_per_task: int
    pipe_images_per_class: int
    pipe_sides: tuple[int, int]  # range of the written JPEGs' sides (ImageNet-R: 300-700 px)
    pipe_epochs: int
    pipe_batch: int
    pipe_workers: int
    executor: str
    compile: bool


def settings(cpu_smoke: bool) -> Settings:
    if cpu_smoke:
        tiny = {"img_size": 32, "embed_dim": 48, "depth": 2, "num_heads": 2}
        case = Case("smoke", "vit_tiny_patch16_224", tiny, batch_size=4, rank=2, classes=4, steps=1, epochs=1, repeats=2)
        return Settings(case, 1, 2, 2, 5, (40, 60), 1, 8, 0, "local", compile=False)
    case = Case("vit_b16_224", "vit_base_patch16_224", {"img_size": 224}, batch_size=128, rank=10, classes=20, steps=8,
                epochs=50, repeats=5)
    return Settings(case, 5, 10, 20, 8, (300, 700), 2, 128, 4, "ray", compile=True)


# -------------------------------------------------------------------------- part 1
def _epoch_times(subject, batches, spec: TrainSpec, device: torch.device, repeats: int) -> tuple[list[float], float]:
    """One :func:`train_session` call of ``1 + repeats`` epochs over ``batches``.

    Returns:
        The seconds of each epoch after the first (steady state), and of the first
        (warm-up: cuDNN/cuBLAS choices, ``torch.compile``'s compilation). One call,
        so a compiled network is compiled once (``train_session`` wraps it per call).
    """
    marks: list[float] = []

    def mark(epoch: int, loss: float, accuracy: float) -> None:
        synchronize(device)
        marks.append(time.perf_counter())

    synchronize(device)
    start = time.perf_counter()
    train_session(
        subject.net, subject.params, batches, spec.model_copy(update={"epochs": repeats + 1}),
        head_names=[subject.head], class_offset=subject.class_offset, device=device, on_epoch_end=mark,
    )
    return [b - a for a, b in zip(marks, marks[1:])], marks[0] - start


def measure_steps(s: Settings, device: torch.device, log) -> list[dict[str, Any]]:
    case = s.case
    backbone = build_backbone(case, device)
    batches = synthetic_batches(case.batch_size * case.steps, case.batch_size, case, s.frozen * case.classes, device)
    spec = TrainSpec(batch_size=case.batch_size, precision="bf16")
    variants = [("timm floor (frozen backbone fwd+bwd)", "floor", spec), ("InfLoRA step, eager", "inflora", spec)]
    if s.compile:
        variants.append(("InfLoRA step, torch.compile", "inflora", spec.model_copy(update={"compile": True})))
    images = sum(int(y.shape[0]) for _, y in batches)
    rows = []
    for label, kind, variant_spec in variants:
        build = build_floor if kind == "floor" else build_inflora
        subject = build(backbone, case, s.frozen, device)
        reset_peak_memory(device)
        epochs, first = _epoch_times(subject, batches, variant_spec, device, case.repeats)
        ips = images / statistics.median(epochs)
        peak = peak_memory_mb(device).get("cuda_allocated", float("nan"))
        rows.append({"variant": label, "images_per_s": ips, "peak_cuda_mib": peak, "first_epoch_s": first})
        log(f"{label}: {ips:.1f} images/s (first epoch {first:.1f} s), peak {peak:.0f} MiB")
        del subject
        if device.type == "cuda":
            torch.cuda.empty_cache()
    floor = rows[0]["images_per_s"]
    for row in rows:
        row["floor_over_this"] = floor / row["images_per_s"]
    return rows


# -------------------------------------------------------------------------- part 2
class DeviceMemoryPoller:
    """Peak memory in use on a CUDA device by every process (``mem_get_info``), polled in a thread."""

    def __init__(self, device: torch.device, interval_s: float = 0.1) -> None:
        self.device, self.interval_s = device, interval_s
        self.enabled = device.type == "cuda"
        self.baseline = self._used() if self.enabled else 0.0
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> float:
        free, total = torch.cuda.mem_get_info(self.device)
        return (total - free) / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._used())

    def __enter__(self) -> "DeviceMemoryPoller":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()

    @property
    def peak_above_baseline_mib(self) -> float:
        return self.peak - self.baseline if self.enabled else float("nan")


def pipeline_config(s: Settings, data_root: Path, checkpoint: Path, out: Path, gpus: float, seeds: list[int]):
    from pipeline.config import config_from_dict

    case = s.case
    return config_from_dict({
        "name": f"gpu_check_g{str(gpus).replace('.', '')}",
        "seeds": seeds,
        "output_dir": str(out),
        "backbone": {"name": case.model, "pretrained": False, "checkpoint": str(checkpoint), "overrides": case.overrides},
        "data": {
            "name": "image_folder", "root": str(data_root), "num_tasks": s.pipe_tasks, "class_order": "fixed",
            "val_fraction": 0.0, "test_fraction": 0.2, "split_seed": 0, "image_size": case.img_size, "normalization": "none",
            "num_workers": s.pipe_workers, "pipeline": "device", "cache_dir": str(out.parent / "cache"),
        },
        "method": {"name": "inflora", "rank": case.rank, "lamb": 0.98},
        "train": {"optimizer": "adam", "lr": 5e-4, "epochs": s.pipe_epochs, "batch_size": s.pipe_batch, "precision": "bf16"},
        "resources": {"cpus_per_stage": 4 if s.executor == "ray" else 1, "gpus_per_stage": gpus, "executor": s.executor},
        "tracking": {"enabled": False},
    })


def run_stages(s: Settings, work: Path, device: torch.device, log) -> list[dict[str, Any]]:
    from model.backbone import create_backbone, save_backbone
    from pipeline.running.runner import execute, make_specs
    from pipeline.running.state import StageKey

    case = s.case
    data_root = write_jpeg_folder(work / "imagenet_r_shaped", s.pipe_tasks * s.pipe_classes_per_task, s.pipe_images_per_class, s.pipe_sides)
    log(f"wrote {s.pipe_tasks * s.pipe_classes_per_task * s.pipe_images_per_class} ImageNet-R-shaped JPEGs")
    checkpoint = work / "backbone.safetensors"
    torch.manual_seed(0)
    save_backbone(create_backbone(case.model, pretrained=False, overrides=case.overrides), checkpoint)
    gpu_settings = [(1.0, [0]), (0.5, [0, 1]), (0.25, [0, 1, 2, 3])] if device.type == "cuda" else [(0.0, [0]), (0.0, [0, 1])]
    rows = []
    for gpus, seeds in gpu_settings:
        cfg = pipeline_config(s, data_root, checkpoint, work / f"runs_g{gpus}", gpus, seeds)
        started = time.perf_counter()
        with DeviceMemoryPoller(device) as poller:
            outcomes = execute(make_specs(cfg), progress=False)
        wall = time.perf_counter() - started
        devices = sorted({o.run_dir.read_done(StageKey(0, "train"))["device"] for o in outcomes})
        finals = [o.results().summary("test").get("final_acc_task_mean", float("nan")) for o in outcomes]
        train_s = statistics.mean(
            sum(o.run_dir.read_done(StageKey(t, "train"))["wall_time_s"] for t in range(s.pipe_tasks)) for o in outcomes
        )
        train_images = statistics.mean(sum(len(x) for x in o.run_dir.read_json("split.json")["train"]) for o in outcomes)
        # a run's wall time with its training stretched to the paper's 50 epochs (every other stage as measured)
        projected = wall - train_s + train_s * PAPER_EPOCHS / s.pipe_epochs
        rows.append({
            "gpus_per_stage": gpus, "runs": len(seeds), "wall_s": wall, "stage_devices": ",".join(devices),
            "peak_device_mib": poller.peak_above_baseline_mib, "final_acc": finals, "s_per_task": wall / s.pipe_tasks,
            "train_images_per_s": len(seeds) * train_images * s.pipe_epochs / train_s, "projected_seed_s": projected,
        })
        log(f"stages, gpus_per_stage {gpus}, {len(seeds)} run(s): {wall:.1f} s on {devices}, peak {poller.peak_above_baseline_mib:.0f} MiB")
    return rows


# -------------------------------------------------------------------------- report
def write_report(path: Path, s: Settings, device: torch.device, steps: list[dict], stages: list[dict], cpu_smoke: bool, total_s: float) -> None:
    case = s.case
    lines = [
        "# GPU check" + (" (CPU smoke: tiny sizes, numbers mean nothing)" if cpu_smoke else ""),
        "",
        f"`bash benchmarks/gpu_check.sh{' --cpu-smoke' if cpu_smoke else ''}` — {time.strftime('%Y-%m-%d %H:%M')} on "
        f"{device_name(device)}; torch {torch.__version__}, Python {platform.python_version()}; {total_s:.0f} s in all.",
        "",
        f"## Training step: {case.model} at {case.img_size}², batch {case.batch_size}, bf16 autocast, "
        f"session {s.frozen} ({s.frozen} frozen branches, rank {case.rank}); median of {case.repeats} epochs of "
        f"{case.steps} steps after a warm-up epoch, in one `train_session` call",
        "",
        "| variant | images/s | floor / variant | warm-up epoch s | peak GPU MiB (allocated) |",
        "|---|---|---|---|---|",
    ]
    for r in steps:
        lines.append(
            f"| {r['variant']} | {r['images_per_s']:.1f} | {r['floor_over_this']:.3f} | {r['first_epoch_s']:.1f} | {r['peak_cuda_mib']:.0f} |"
        )
    lines += [
        "",
        f"## Real stages: {s.pipe_tasks} tasks × {s.pipe_classes_per_task} classes, {s.pipe_images_per_class} ImageNet-R-shaped "
        f"JPEGs per class (sides {s.pipe_sides[0]}–{s.pipe_sides[1]} px, 80/20 by `split_seed`), {s.pipe_epochs} epochs, "
        f"batch {s.pipe_batch}, `data.pipeline: device`, executor `{s.executor}`",
        "",
        "Train images/s: every run's training images × epochs over its train stages' wall time, summed over the runs at once. "
        f"Projected seed: the run's wall time with its train stages stretched to {PAPER_EPOCHS} epochs, every other stage as "
        f"measured (per run; the official code: {OFFICIAL_SEED_S / 60:.0f} min per ImageNet-R seed).",
        "",
        "| gpus_per_stage | runs at once | wall s | stage device | peak GPU MiB in use (all processes) | s per task | "
        "train images/s (all runs) | projected 50-epoch seed s | vs official | final acc (random data) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if not stages:
        lines.append("| (not finished) | | | | | | | | | |")
    for r in stages:
        accs = ", ".join(f"{a:.3f}" for a in r["final_acc"])
        lines.append(
            f"| {r['gpus_per_stage']:g} | {r['runs']} | {r['wall_s']:.1f} | {r['stage_devices']} | {r['peak_device_mib']:.0f} | "
            f"{r['s_per_task']:.1f} | {r['train_images_per_s']:.0f} | {r['projected_seed_s']:.0f} | "
            f"{OFFICIAL_SEED_S / r['projected_seed_s']:.1f}× | {accs} |"
        )
    lines += ["", "Random weights and random images: accuracies are chance level by construction; only costs are read.",
              "Targets on an H100/H200-class GPU: InfLoRA step ≥ 0.8 × the floor's images/s; projected seed ≤ 300 s; "
              "≥ 20× faster than the official code."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU, to test the script")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report file (default benchmarks/results/gpu_check.md)")
    p.add_argument("--workdir", type=Path, default=None, help="folder for the synthetic data and runs (a temp dir)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[gpu_check {time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --cpu-smoke to test the script on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if args.cpu_smoke:
        torch.set_num_threads(1)
    s = settings(args.cpu_smoke)
    steps = measure_steps(s, device, log)
    # written after each part, so that a check stopped by its time limit keeps what it measured
    write_report(args.out, s, device, steps, [], args.cpu_smoke, time.perf_counter() - started)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the stages' memory is measured above what the driver still holds
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        stages = run_stages(s, Path(tmp), device, log)
    write_report(args.out, s, device, steps, stages, args.cpu_smoke, time.perf_counter() - started)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
