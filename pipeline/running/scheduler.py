"""Where stages run: Ray tasks on a (local or remote) cluster, or in-process.

This is the only module that imports Ray for the run pipeline. Each stage is a
Ray task with its own resources (the GPU where it computes, a CPU for the data
split); a stage's upstream results are passed as task arguments, so Ray starts
it only when they are ready, and many runs submitted at once interleave on the
cluster.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import ResourcesConfig
from .stages import RunSpec, run_stage
from .state import StageKey

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "create_executor", "init_ray"]

_logger = logging.getLogger(__name__)


class Executor(Protocol):
    def submit(self, spec: RunSpec, key: StageKey, upstream: Sequence[Any]) -> Any:
        """Schedule ``key`` of ``spec`` after the ``upstream`` handles; return a handle."""

    def wait(self, handles: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        """Block until at least one handle is finished: (finished, pending)."""

    def result(self, handle: Any) -> dict[str, Any]:
        """The stage's result, or the exception it raised."""

    def shutdown(self) -> None: ...


# ---------------------------------------------------------------------------- local
@dataclass(eq=False)  # hashed by identity: handles are dict keys
class _LocalHandle:
    spec: RunSpec
    key: StageKey
    upstream: Sequence["_LocalHandle"]
    done: bool = False
    value: Any = None
    error: BaseException | None = None


@dataclass
class LocalExecutor:
    """Runs stages in this process, one at a time, in submission order (for debugging and tests)."""

    queue: list[_LocalHandle] = field(default_factory=list)

    def submit(self, spec: RunSpec, key: StageKey, upstream: Sequence[Any]) -> _LocalHandle:
        handle = _LocalHandle(spec, key, list(upstream))
        self.queue.append(handle)
        return handle

    def wait(self, handles: Sequence[_LocalHandle]) -> tuple[list[_LocalHandle], list[_LocalHandle]]:
        finished = [h for h in handles if h.done]
        if not finished:
            handle = next(h for h in self.queue if not h.done and h in handles)
            failed = next((u for u in handle.upstream if u.error is not None), None)
            if failed is not None:
                handle.error = RuntimeError(f"upstream stage {failed.key} failed: {failed.error}")
            else:
                try:
                    handle.value = run_stage(handle.spec, handle.key)
                except Exception as exc:  # reported through result()
                    handle.error = exc
            handle.done = True
            finished = [handle]
        return finished, [h for h in handles if not h.done]

    def result(self, handle: _LocalHandle) -> dict[str, Any]:
        if handle.error is not None:
            raise handle.error
        return handle.value

    def shutdown(self) -> None:
        self.queue.clear()


# ------------------------------------------------------------------------------ ray
def _cluster_record() -> Path:
    """``<ray temp dir>/ray_current_cluster``: the address that ``ray start`` left on this machine.

    ``ray.init()`` without an address connects to that cluster (and refuses
    ``num_cpus`` there), even when the file outlived the cluster.
    """
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


def _last_started_cluster() -> str | None:
    try:
        return _cluster_record().read_text().strip() or None
    except OSError:
        return None


def _answers(address: str, timeout_s: float = 2.0) -> bool:
    """Whether something listens at ``host:port`` (the cluster's GCS)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _connect(address: str, why: str) -> None:
    import ray

    try:
        ray.init(address=address, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConnectionError(
            f"cannot connect to the Ray cluster at {address} ({why}): {exc}. A cluster with token "
            "authentication needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) "
            "here; a driver outside the cluster's nodes needs a local raylet (ray start --address=... --num-cpus=0); "
            "RAY_ADDRESS=local starts a private cluster instead"
        ) from exc
    _logger.info("connected to the Ray cluster at %s (%s)", address, why)


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to a Ray cluster, or start a local one (no dashboard).

    In order: ``RAY_ADDRESS`` (``local`` starts a private cluster); else the cluster
    that ``ray start`` on this machine recorded, if it still answers (a message says
    so); else a new local cluster, with a warning when that record is stale.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    address = os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        _connect(address, "RAY_ADDRESS")
        return
    recorded = None if address == "local" else _last_started_cluster()
    if recorded and _answers(recorded):
        _logger.warning("connecting to the Ray cluster started with `ray start` at %s (RAY_ADDRESS=local starts a private one)", recorded)
        _connect(recorded, "started with `ray start` on this machine")
        return
    if recorded:
        _logger.warning("ignoring a stale Ray cluster record (%s): nothing answers at %s; starting a local cluster",
                        _cluster_record(), recorded)
    _reap_leftovers()
    # address="local": never the recorded cluster (ray.init would try it and refuse num_cpus there)
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True)
    _record_cluster_processes()


_LEFTOVERS = "inflora_local_cluster.json"
"""In a local cluster's session folder: the driver and the processes its cluster started."""


def _record_cluster_processes() -> None:
    """Note the local cluster's processes (pid, start time) in its session folder.

    A SIGKILLed driver takes its raylet and GCS along (Ray ties them to it), but
    the raylet's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) go on for
    a minute or two, blocked on the dead GCS. The next local start reaps them.
    """
    import psutil
    import ray

    me = psutil.Process()
    record = {"driver": [me.pid, me.create_time()], "processes": [[p.pid, p.create_time()] for p in me.children(recursive=True)]}
    try:
        folder = Path(ray._private.worker._global_node.get_session_dir_path())
        (folder / _LEFTOVERS).write_text(json.dumps(record))
    except (AttributeError, OSError, psutil.Error) as exc:  # the record is a courtesy
        _logger.debug("cannot record the local cluster's processes: %s", exc)


def _same(pid: int, created: float):
    """The process ``pid`` if it is still the one that started at ``created``, else ``None``."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - created) < 1e-3 else None
    except psutil.Error:
        return None


def _reap_leftovers() -> None:
    """Stop what the local clusters of killed drivers left running (see :func:`_record_cluster_processes`)."""
    import psutil

    for path in _cluster_record().parent.glob(f"session_*/{_LEFTOVERS}"):
        if path.parent.is_symlink():  # session_latest
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _same(*record["driver"]) is not None:
            continue  # that driver still runs its cluster
        left = [proc for proc in (_same(*entry) for entry in record["processes"]) if proc is not None]
        for proc in left:
            try:
                proc.kill()
            except psutil.Error:
                pass
        if left:
            _logger.warning("stopped %d process(es) that a killed driver's Ray cluster left running (%s)", len(left), path.parent.name)
        path.unlink(missing_ok=True)


def concurrent_stages(available: dict[str, float], resources: ResourcesConfig, limit: int = 8) -> int:
    """How many computing stages the cluster's free ``available`` resources fit at once (1 to ``limit``)."""
    slots = available.get("CPU", 1.0) / resources.cpus_per_stage
    if resources.gpus_per_stage > 0:
        slots = min(slots, available.get("GPU", 0.0) / resources.gpus_per_stage)
    return max(1, min(limit, int(slots + 1e-9)))


def _warm_up() -> None:
    """Import the stage code (torch, timm, the model) in a worker process."""
    import pipeline.running.stages  # noqa: F401


class RayExecutor:
    """Submits every stage as a Ray task with the resources of ``ResourcesConfig``.

    Starting Ray also starts one warm-up task per stage that can run at once, so
    that those worker processes import torch and timm while the driver is still
    opening its MLflow runs, instead of when the first stage arrives. Warming more
    workers than that would only spend CPU on imports that no stage uses.
    """

    def __init__(self, resources: ResourcesConfig) -> None:
        import ray

        init_ray(resources.num_cpus)
        self._ray = ray
        self._remote = ray.remote(run_stage)
        slots = concurrent_stages(ray.available_resources(), resources)
        self._warm = [ray.remote(_warm_up).options(num_cpus=1).remote() for _ in range(slots)]

    def submit(self, spec: RunSpec, key: StageKey, upstream: Sequence[Any]) -> Any:
        res = spec.config.resources
        if key.stage == "split":
            options = {"num_cpus": min(1.0, res.cpus_per_stage), "num_gpus": 0}
        else:
            options = {"num_cpus": res.cpus_per_stage, "num_gpus": res.gpus_per_stage}
        return self._remote.options(
            **options, max_retries=res.max_retries, name=f"{spec.label}:{key}"
        ).remote(spec, key, *upstream)

    def wait(self, handles: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        return self._ray.wait(list(handles), num_returns=1)

    def result(self, handle: Any) -> dict[str, Any]:
        try:
            return self._ray.get(handle)
        except self._ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc
            raise cause from None

    def shutdown(self) -> None:
        pass  # the cluster outlives one batch of runs; ray.shutdown() at process exit


def create_executor(resources: ResourcesConfig) -> Executor:
    return RayExecutor(resources) if resources.executor == "ray" else LocalExecutor()
