"""A run's state on disk: the run directory, written atomically stage by stage.

Layout::

    RUN_DIR/
      run.json                      config, seed, versions (written once)
      events.jsonl                  stage start/finish timeline (append-only)
      split.json                    class order and per-task indices
      split.done.json               stage marker: written last, atomically
      session_000/
        design.safetensors          designed down-projections
        design.done.json
        adapter.safetensors         trained branch + heads (never the backbone)
        train.done.json             losses, wall time
        memory.safetensors          memory bases after the session
        update.done.json
        eval.done.json              accuracy row, metrics
      tracking.json                 MLflow run id and which stages it has logged

A stage is finished if and only if its ``*.done.json`` marker exists; markers are
written after every output of the stage, so a run killed at any point resumes
from its last finished stage.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["StageKey", "RunDir", "RunStateError", "atomic_write_bytes"]

STAGES = ("split", "design", "train", "update", "align", "eval")


class RunStateError(RuntimeError):
    """The run directory is inconsistent or belongs to another configuration."""


@dataclass(frozen=True)
class StageKey:
    """One stage of one run: ``("split", None)`` or ``("train", 3)``."""

    session: int
    stage: str

    @classmethod
    def split(cls) -> "StageKey":
        return cls(-1, "split")

    def __str__(self) -> str:
        return "split" if self.stage == "split" else f"session_{self.session:03d}/{self.stage}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDir:
    """Reads and writes one run's directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ----------------------------------------------------------------- files
    def file(self, relative: str) -> Path:
        return self.path / relative

    def session_dir(self, session: int) -> Path:
        return self.path / f"session_{session:03d}"

    def write_json(self, relative: str, obj: Any) -> None:
        atomic_write_bytes(self.file(relative), (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())

    def read_json(self, relative: str) -> Any:
        path = self.file(relative)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise RunStateError(f"{path} is missing: has the stage that writes it run?") from None
        except json.JSONDecodeError as exc:
            raise RunStateError(f"{path} is corrupt: {exc}") from exc

    def save_tensors(self, relative: str, tensors: Mapping[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        atomic_write_bytes(self.file(relative), blob)

    def load_tensors(self, relative: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        path = self.file(relative)
        if not path.is_file():
            raise RunStateError(f"{path} is missing: has the stage that writes it run?")
        try:
            return load(path.read_bytes())
        except Exception as exc:
            raise RunStateError(f"{path} is corrupt: {exc}") from exc

    # --------------------------------------------------------------- markers
    def marker(self, key: StageKey) -> Path:
        return self.file(f"{key}.done.json")

    def is_done(self, key: StageKey) -> bool:
        return self.marker(key).is_file()

    def mark_done(self, key: StageKey, info: Mapping[str, Any]) -> None:
        self.write_json(f"{key}.done.json", dict(info))

    def read_done(self, key: StageKey) -> dict[str, Any]:
        return self.read_json(f"{key}.done.json")

    def log_event(self, key: StageKey, event: str, **fields: Any) -> None:
        """Append one line to the stage timeline (best effort; never fails a stage)."""
        line = json.dumps({"time": time.time(), "stage": str(key), "event": event, "pid": os.getpid(), **fields})
        try:
            with open(self.file("events.jsonl"), "a") as fh:
                fh.write(line + "\n")
        except OSError:
            pass
