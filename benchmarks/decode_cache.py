"""The decode-once trade-off: host CPU per image and bytes per image, JPEG against the uint8 cache at several caps.

On generated ImageNet-R-shaped JPEGs (:func:`benchmarks.harness.write_jpeg_folder`),
one thread, process CPU time:

* *PIL decode*: ``ImageFileDataset.load`` (open, decode, convert to RGB), what
  the PIL path pays per image and epoch before any transform;
* *cache crop*: drawing the crop box and copying its pixels out of the
  memory-mapped cache (:class:`pipeline.data.decoded.DecodedImages`), what the
  device path's workers pay instead;
* bytes per image of the JPEG files and of the cache at native resolution and
  with the longer side capped (``data.cache_max_side``).

JPEG bytes decoded on the GPU (``torchvision.io.decode_jpeg(device="cuda")``)
would keep the JPEG's size but need a GPU to measure; see the README.

Usage::

    python -m benchmarks.decode_cache [--images 60] [--caps 512 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.harness import RESULTS, command_line, device_name, write_jpeg_folder


def measure(files: list[str], cache: Path, caps: Sequence[int | None], repeats: int) -> list[dict[str, float | str]]:
    import torch

    from pipeline.data.batch_transforms import sample_crops
    from pipeline.data.decoded import decoded_train
    from pipeline.data.image_folder import ImageFileDataset

    torch.set_num_threads(1)
    pool = ImageFileDataset(files, np.zeros(len(files), dtype=np.int64), lambda image: image, "RGB")
    n = len(files)
    start = time.process_time()
    for _ in range(repeats):
        for i in range(n):
            pool.load(i)
    rows: list[dict[str, float | str]] = [{"source": "JPEG files, PIL decode", "kB_per_image": float(np.mean([os.path.getsize(f) for f in files])) / 1e3,
                                           "host_ms_per_image": 1e3 * (time.process_time() - start) / (repeats * n)}]
    for cap in caps:
        decoded = decoded_train(pool, cache, cap)
        start = time.process_time()
        for r in range(repeats):
            for i, box in enumerate(sample_crops([decoded.original_size(i) for i in range(n)], r)):
                decoded.crop(i, *box[:4])
        rows.append({"source": f"uint8 cache, {'native' if cap is None else f'longer side ≤ {cap}'}: draw box + copy crop",
                     "kB_per_image": decoded.pixels.size / n / 1e3, "host_ms_per_image": 1e3 * (time.process_time() - start) / (repeats * n)})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--caps", type=int, nargs="*", default=[512, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import torch

    work = Path(tempfile.mkdtemp(prefix="decode_cache_"))
    try:
        files = sorted(str(p) for p in write_jpeg_folder(work / "images", 1, args.images).rglob("*.jpg"))
        load = os.getloadavg()[0]
        rows = measure(files, work / "cache", [None, *args.caps], args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = pd.DataFrame(rows)
    md = "\n".join([
        "# Decode once: host CPU and bytes per image",
        "",
        f"Command: `{command_line(argv)}`; {device_name(torch.device('cpu'))}, one thread, process CPU time, "
        f"load average {load:.1f}; {args.images} generated ImageNet-R-shaped JPEGs (sides 300–700 px), {args.repeats} passes.",
        "",
        table.to_markdown(index=False, floatfmt=".3f"),
        "",
    ])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "decode_cache.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
