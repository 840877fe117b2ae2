"""Exclusive locks: one driver per run directory, one creator per embedded MLflow store.

Two ``inflora run`` of the same config would otherwise both drive one run
directory: both open an MLflow run for it, both log half the stages, and
``tracking.json`` ends up claiming every stage logged. The driver therefore
holds an ``fcntl.flock`` on ``RUN_DIR/.lock`` for as long as it drives the run;
a second command fails at once, naming the process that holds it. ``flock`` locks
vanish with the process that holds them (even a SIGKILLed one), so a stale lock
file never blocks a resume.

A fresh sqlite store is created (and migrated by alembic) by the first client
that touches it; two processes doing so at once fail in the migration. The
creation is serialised by a lock file beside the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .state import RunStateError

__all__ = ["RunLockedError", "run_lock", "hold_run_locks", "locked_runs", "store_lock", "LOCK_FILE"]

LOCK_FILE = ".lock"

F = TypeVar("F", bound=Callable[..., Any])


class RunLockedError(RunStateError):
    """Another process drives this run directory."""


def _command() -> str:
    """This process's command line (``/proc`` has the interpreter's own arguments; ``sys.argv`` lacks them)."""
    try:
        argv = [a.decode(errors="replace") for a in Path("/proc/self/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        argv = [sys.executable, *sys.argv]
    text = shlex.join(argv).replace("\n", "\\n")  # one line
    return text if len(text) <= 300 else text[:297] + "..."


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        info = {}
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} ({info.get('command')!s})"


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the exclusive lock of ``run_dir`` (created if missing) for the ``with`` block.

    Raises:
        RunLockedError: another process holds it; the message names that process.
    """
    path = Path(run_dir).resolve() / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{path.parent} is in use by {_describe(path)}; wait for that command to end (or stop it), then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder()) + "\n").encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _discard(run_dir: Path, created: Path) -> None:
    """Remove ``run_dir`` (made by this command) and its parents up to ``created`` that are left empty."""
    shutil.rmtree(run_dir, ignore_errors=True)
    for folder in (run_dir.parent, *run_dir.parent.parents):
        if not folder.is_relative_to(created):
            break
        try:
            folder.rmdir()  # only if empty: another command may have put its run there meanwhile
        except OSError:
            break


@contextlib.contextmanager
def hold_run_locks(
    run_dirs: Sequence[str | os.PathLike[str]], discard_on: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """Hold the locks of every run directory, or none (the first one held elsewhere raises).

    Args:
        run_dirs: the run directories (created if missing).
        discard_on: exceptions that mean "refused before any stage ran": the run
            directories this call created are removed again, so that a refusal
            leaves nothing behind (no ``.lock``, no ``run.json``).
    """
    paths = list(dict.fromkeys(Path(d).resolve() for d in run_dirs))
    created = {path: _first_missing(path) for path in paths}
    try:
        with contextlib.ExitStack() as stack:
            for path in paths:
                stack.enter_context(run_lock(path))
            yield
    except discard_on:
        for path, first in created.items():
            if first is not None:
                _discard(path, first)
        raise


def locked_runs(fn: F | None = None, *, discard_on: tuple[type[BaseException], ...] = ()) -> Any:
    """Decorate ``execute(specs, ...)`` so that it holds every spec's run-directory lock
    (``discard_on``: see :func:`hold_run_locks`)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(specs, *args, **kwargs):
            with hold_run_locks([spec.run_dir for spec in specs], discard_on):
                return fn(specs, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (``None`` for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


@contextlib.contextmanager
def store_lock(uri: str, timeout_s: float = 300.0) -> Iterator[None]:
    """Serialise the creation/migration of an embedded sqlite MLflow store (a no-op for servers)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    lock = db.with_name(db.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RunStateError(f"the MLflow store {db} is being created by another process for over {timeout_s:.0f} s ({lock})") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)
