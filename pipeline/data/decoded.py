"""Decode once: memory-mapped uint8 caches of an image pool, shared by every run on a node.

Decoding a JPEG costs the host far more than reading its pixels back (README,
"Benchmarks": 1.25 ms vs a few µs per ImageNet-R-shaped image), and the PIL
path pays it at every epoch of every run. The first run that needs a pool
builds two caches under ``data.cache_dir``; every later stage, epoch, DataLoader
worker and concurrent run on the node maps the same files read-only (the page
cache holds one copy):

* **training pixels** (:class:`DecodedImages`): each image decoded in the
  pool's mode, stored at its native size, or with its longer side capped at
  ``data.cache_max_side`` (FFCV's ``max_resolution``), in one flat uint8 file
  with an index of offsets and original sizes. Crop boxes are drawn on the
  original size (:mod:`pipeline.data.batch_transforms`) and scaled to the
  stored one, so a cap changes only the resolution the crop is resized from;
* **test-time inputs** (:func:`decoded_eval`): PIL's own ``Resize`` +
  ``CenterCrop`` of every image, ``(N, S, S, C)`` uint8, so evaluation inputs
  are bit-identical to the PIL path's.

A cache is keyed by the pool's identity (file paths, sizes and modification
times, or the array's bytes) and the settings that shape it; a changed file
gets a new cache. A build writes into a private folder renamed into place at
the end (a killed build leaves no half cache) under a file lock (concurrent
runs build once).

Left out, by measurement: JPEG bytes decoded on the device
(``torchvision.io.decode_jpeg(device="cuda")``) would need ~12× less space
(80 kB vs ~1 MB per ImageNet-R image) but cannot be measured without a GPU
here; the uint8 cache already brings the host's share per image to
microseconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CACHE_VERSION", "default_cache_dir", "pool_identity", "DecodedImages", "decoded_train", "decoded_eval"]

_logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bumped when the layout of a cache changes (part of every key)."""


def default_cache_dir() -> Path:
    """``$INFLORA_CACHE_DIR``, else ``~/.cache/inflora/decoded``."""
    return Path(os.environ.get("INFLORA_CACHE_DIR") or Path.home() / ".cache" / "inflora" / "decoded")


def pool_identity(pool: Any) -> str:
    """A digest of what a pool's pixels are made of: its files (path, size, mtime) or its array, and its mode."""
    h = hashlib.sha256(f"{type(pool).__name__}|{pool.mode}".encode())
    files = getattr(pool, "files", None)
    if files is not None:
        for f in files:
            st = os.stat(f)
            h.update(f + b"|%d|%d\n" % (st.st_size, st.st_mtime_ns))
    else:
        images = np.ascontiguousarray(pool.images)
        h.update(repr(images.shape).encode())
        h.update(memoryview(images).cast("B"))
    return h.hexdigest()


def _hwc(image: Any) -> np.ndarray:
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _build(folder: Path, write: Callable[[Path], None]) -> Path:
    """``folder``, built by ``write(tmp)`` once under a lock unless it is there already."""
    if (folder / "done").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "done").is_file():
            tmp = folder.parent / f"{folder.name}.tmp{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            write(tmp)
            (tmp / "done").write_text("")
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
    return folder


def _threads() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0))))


class DecodedImages:
    """Training pixels of a pool: ``crop(i, box)`` reads only the box's bytes from the memory map.

    Attributes:
        pixels: flat uint8 memory map of every image, ``(h, w, C)`` row-major one after another.
        index: ``(N, 5)`` int64: offset, stored height, stored width, original height, original width.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.index = np.load(folder / "index.npy")
        self.channels = int(json.loads((folder / "meta.json").read_text())["channels"])
        self.pixels = np.memmap(folder / "pixels.u8", dtype=np.uint8, mode="r") if self.index[:, 1:3].prod(1).sum() else np.empty(0, np.uint8)

    def __len__(self) -> int:
        return len(self.index)

    def original_size(self, i: int) -> tuple[int, int]:
        return int(self.index[i, 3]), int(self.index[i, 4])

    def crop(self, i: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """The box (in original pixels) of image ``i``, ``(h, w, C)`` uint8, scaled to the stored size when capped."""
        offset, sh, sw, oh, ow = (int(v) for v in self.index[i])
        if (sh, sw) != (oh, ow):  # a capped image: the same box at the stored scale
            fy, fx = sh / oh, sw / ow
            top, left = min(sh - 1, int(round(top * fy))), min(sw - 1, int(round(left * fx)))
            height, width = max(1, min(sh - top, int(round(height * fy)))), max(1, min(sw - left, int(round(width * fx))))
        image = self.pixels[offset : offset + sh * sw * self.channels].reshape(sh, sw, self.channels)
        return np.ascontiguousarray(image[top : top + height, left : left + width])


def decoded_train(pool: Any, cache_dir: str | os.PathLike[str] | None, max_side: int | None) -> DecodedImages:
    """The training-pixel cache of ``pool`` (anything with ``mode``, ``load(i)`` and ``files`` or ``images``)."""
    key = hashlib.sha256(f"train|v{CACHE_VERSION}|{pool_identity(pool)}|{max_side}".encode()).hexdigest()[:24]
    folder = Path(cache_dir or default_cache_dir()) / f"train_{key}"

    def decode(i: int) -> tuple[np.ndarray, tuple[int, int]]:
        image = pool.load(i)
        original = (image.height, image.width)
        if max_side is not None and max(original) > max_side:
            from PIL import Image

            scale = max_side / max(original)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
        return _hwc(image), original

    def write(tmp: Path) -> None:
        _logger.info("decoding %d images once into %s", len(pool), folder)
        index = np.zeros((len(pool), 5), dtype=np.int64)
        offset, channels = 0, len(pool.mode)
        with open(tmp / "pixels.u8", "wb") as out, ThreadPoolExecutor(_threads()) as workers:  # PIL decodes without the GIL
            for i, (array, original) in enumerate(workers.map(decode, range(len(pool)))):
                out.write(array.tobytes())
                index[i] = (offset, array.shape[0], array.shape[1], *original)
                offset += array.size
        np.save(tmp / "index.npy", index)
        (tmp / "meta.json").write_text(json.dumps({"channels": channels, "max_side": max_side, "version": CACHE_VERSION}))

    return DecodedImages(_build(folder, write))


def decoded_eval(
    pool: Any, cache_dir: str | os.PathLike[str] | None, image_size: int, resize_ratio: float, interpolation: str = "bilinear"
) -> np.ndarray:
    """``(N, S, S, C)`` uint8 memory map of PIL's test-time resize and centre crop of every image of ``pool``."""
    from .transforms import eval_resize

    spec = f"{image_size}|{resize_ratio!r}|{interpolation}"
    key = hashlib.sha256(f"eval|v{CACHE_VERSION}|{pool_identity(pool)}|{spec}".encode()).hexdigest()[:24]
    folder = Path(cache_dir or default_cache_dir()) / f"eval_{key}"
    resize = eval_resize(image_size, resize_ratio, interpolation)

    def write(tmp: Path) -> None:
        _logger.info("resizing %d test-time images once into %s", len(pool), folder)
        out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(pool), image_size, image_size, len(pool.mode)))
        with ThreadPoolExecutor(_threads()) as workers:
            for i, array in enumerate(workers.map(lambda k: _hwc(resize(pool.load(k))), range(len(pool)))):
                out[i] = array
        out.flush()
        del out

    return np.load(_build(folder, write) / "images.npy", mmap_mode="r")
