"""What the benchmarks share: clocks, device names, tables, and synthetic image folders.

Every benchmark under ``benchmarks/`` is a module of this package, run as
``python -m benchmarks.<name>`` (or ``python benchmarks/<name>.py`` with the
repository root on ``PYTHONPATH``); none edits ``sys.path``.
"""

from __future__ import annotations

import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ROOT",
    "RESULTS",
    "Clock",
    "synchronize",
    "pick_clock",
    "device_name",
    "command_line",
    "verdict",
    "cpu_seconds",
    "write_digits_folder",
    "write_jpeg_folder",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

Clock = Callable[[], float]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} (CPU, {os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} (CPU, {os.cpu_count()} logical cores)"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that produced a table, for its header."""
    args = sys.argv[1:] if argv is None else list(argv)
    script = Path(sys.argv[0]).resolve()
    head = ["-m", f"benchmarks.{script.stem}"] if script.parent == ROOT / "benchmarks" else [sys.argv[0]]
    return "python " + shlex.join([*head, *args])


def verdict(value: float, target: float, noise: float = 0.0) -> str:
    """``MET``/``MISSED`` for ``value ≤ target``, flagged ``(borderline)`` within ``noise`` of it."""
    word = "MET" if value <= target else "MISSED"
    return f"{word} (borderline)" if abs(value - target) <= noise else word


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers, subprocesses)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def write_digits_folder(root: Path, size: int = 32) -> Path:
    """scikit-learn's digits as grayscale PNG class folders (``root/<digit>/<n>.png``), upscaled to ``size``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for n, (image, label) in enumerate(zip(bunch.images, bunch.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray((image * (255 / 16)).round().astype(np.uint8), mode="L")
        pixels.resize((size, size), Image.BILINEAR).save(folder / f"{n:04d}.png")
    return root


def write_jpeg_folder(root: Path, classes: int, per_class: int, sizes: tuple[int, int] = (300, 700), seed: int = 0,
                      quality: int = 90) -> Path:
    """``classes`` class folders of ``per_class`` photo-like RGB JPEGs, sides drawn uniformly from ``sizes``.

    Smooth colour fields plus noise compress like photographs (ImageNet-R's
    300–700 px images average about 80 kB as JPEG; these land close to it).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
            small = rng.integers(0, 256, size=(max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
            image = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
            image += rng.normal(0, 10, image.shape)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=quality)
    return root
