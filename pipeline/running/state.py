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

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # readers of a run directory need no torch
    import torch

__all__ = ["StageKey", "RunDir", "RunStateError", "IntegrityError", "atomic_write_bytes", "sha256_bytes"]


class RunStateError(RuntimeError):
    """The run directory is inconsistent or belongs to another configuration."""


class IntegrityError(RunStateError):
    """A finished stage's marker or output does not match the checksum recorded for it.

    Attributes:
        path: the file that does not match.
        key: the stage that wrote it.
    """

    def __init__(self, message: str, path: Path, key: "StageKey | None" = None) -> None:
        super().__init__(message)
        self.path = path
        self.key = key


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _marker_checksum(body: Mapping[str, Any]) -> str:
    blob = json.dumps({k: v for k, v in body.items() if k != "checksum"}, sort_keys=True, default=str).encode()
    return sha256_bytes(blob)


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
    """Reads and writes one run's directory; the only place that knows its file names."""

    RUN = "run.json"
    SPLIT = "split.json"
    EVENTS = "events.jsonl"
    TRACKING = "tracking.json"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ----------------------------------------------------------------- files
    def file(self, relative: str) -> Path:
        return self.path / relative

    def session_dir(self, session: int) -> Path:
        return self.path / f"session_{session:03d}"

    @staticmethod
    def slot_file(session: int, slot: str) -> str:
        """Where a session's state slot is saved, relative to the run directory."""
        return f"session_{session:03d}/{slot}.safetensors"

    @staticmethod
    def checkpoint_file(key: "StageKey") -> str:
        """A stage's mid-stage checkpoint (a training step's epochs), relative to the run directory."""
        return f"session_{key.session:03d}/{key.stage}_checkpoint.pt"

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

    def save_tensors(self, relative: str, tensors: Mapping[str, torch.Tensor]) -> str:
        """Write ``tensors`` as safetensors at ``relative``; returns the file's SHA-256."""
        from safetensors.torch import save

        blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        atomic_write_bytes(self.file(relative), blob)
        return sha256_bytes(blob)

    def load_tensors(self, relative: str, sha256: str | None = None) -> dict[str, torch.Tensor]:
        """The tensors at ``relative``; with ``sha256``, only if the file matches it."""
        from safetensors.torch import load

        path = self.file(relative)
        if not path.is_file():
            raise RunStateError(f"{path} is missing: has the stage that writes it run?")
        blob = path.read_bytes()
        if sha256 is not None and sha256_bytes(blob) != sha256:
            raise IntegrityError(f"{path} does not match the checksum its stage recorded (changed or truncated since)", path)
        try:
            return load(blob)
        except Exception as exc:
            raise RunStateError(f"{path} is corrupt: {exc}") from exc

    def file_sha256(self, relative: str) -> str:
        return sha256_bytes(self.file(relative).read_bytes())

    # --------------------------------------------------------------- markers
    def marker(self, key: StageKey) -> Path:
        return self.file(f"{key}.done.json")

    def is_done(self, key: StageKey) -> bool:
        return self.marker(key).is_file()

    def mark_done(self, key: StageKey, info: Mapping[str, Any], outputs: Mapping[str, str] | None = None) -> None:
        """Write ``key``'s marker: its result, the SHA-256 of each output file, and its own checksum."""
        body = {**dict(info), "outputs": dict(outputs or {})}
        body = json.loads(json.dumps(body, sort_keys=True, default=str))
        body["checksum"] = _marker_checksum(body)
        self.write_json(f"{key}.done.json", body)

    def read_done(self, key: StageKey) -> dict[str, Any]:
        """``key``'s marker, if it matches its checksum (raises :class:`IntegrityError` otherwise)."""
        body = self.read_json(f"{key}.done.json")
        if body.get("checksum") != _marker_checksum(body):
            path = self.marker(key)
            raise IntegrityError(f"{path} does not match its checksum (edited or damaged since the stage wrote it)", path, key)
        return body

    def verify(self, key: StageKey) -> None:
        """Check ``key``'s marker and every output it records; raises :class:`IntegrityError` naming the file."""
        body = self.read_done(key)
        for relative, expected in body.get("outputs", {}).items():
            path = self.file(relative)
            if not path.is_file():
                raise IntegrityError(f"{path}, an output of {key}, is missing", path, key)
            if self.file_sha256(relative) != expected:
                raise IntegrityError(f"{path}, an output of {key}, does not match its recorded checksum (changed or truncated)", path, key)

    def output_sha256(self, key: StageKey, relative: str) -> str | None:
        """The checksum ``key``'s marker records for ``relative`` (``None`` if it records none)."""
        return self.read_done(key).get("outputs", {}).get(relative)

    def read_tracking(self) -> dict[str, Any] | None:
        """What the tracker recorded (MLflow run id, stages logged…); ``None`` before it opened the run."""
        return self.read_json(self.TRACKING) if self.file(self.TRACKING).is_file() else None

    def write_tracking(self, state: Mapping[str, Any]) -> None:
        self.write_json(self.TRACKING, dict(state))

    def finished_stages(self) -> list[str]:
        """Every stage with a marker (``split``, ``session_000/design``…), sorted by name."""
        return sorted(str(p.relative_to(self.path))[: -len(".done.json")] for p in self.path.rglob("*.done.json"))

    def unmark(self, key: StageKey) -> None:
        """Forget that ``key`` finished (its outputs are rewritten when it runs again)."""
        self.marker(key).unlink(missing_ok=True)

    def log_event(self, key: StageKey, event: str, **fields: Any) -> None:
        """Append one line to the stage timeline (best effort; never fails a stage)."""
        line = json.dumps({"time": time.time(), "stage": str(key), "event": event, "pid": os.getpid(), **fields})
        try:
            with open(self.file(self.EVENTS), "a") as fh:
                fh.write(line + "\n")
        except OSError:
            pass
