"""Tracking that never stops the computation: an MLflow outage marks the tracker offline.

:class:`GuardedTracker` has :class:`~pipeline.tracking.Tracker`'s driver-side
methods. A failing MLflow call (server killed, network down) marks the tracker
offline instead of raising: stages go on, and what could not be logged stays
recorded in the run directory (``tracking.json`` lists the stages that were
logged; the stage markers hold every result). While offline, the tracker asks
the server again every ``retry_s`` seconds and, once it answers, sends the
backlog in stage order; a later re-run of the same command sends whatever is
left. Metrics carry their stage marker's time, so a batch sent twice is stored
once (see :mod:`pipeline.timestamps`).

MLflow's HTTP client retries a refused connection for minutes by default; the
driver's retries are shortened here (``MLFLOW_HTTP_REQUEST_*``, unless set).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import TrackingConfig
from .results import collect_results
from .stages import RunSpec
from .state import RunDir, RunStateError, StageKey
from .tracking import Tracker, resolve_tracking_uri

__all__ = ["GuardedTracker", "TrackingUnavailable", "probe_tracking_uri", "stages_waiting", "backlog_message"]

_logger = logging.getLogger(__name__)

_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PROBE_TIMEOUT_S = 4.0
OFFLINE_PREFIX = "offline:"


class TrackingUnavailable(RuntimeError):
    """The tracking server does not answer and offline mode is off."""


def probe_tracking_uri(uri: str, timeout_s: float = PROBE_TIMEOUT_S, tries: int = 2) -> str | None:
    """``None`` if the tracking server at ``uri`` answers its ``/health`` (or asks for
    credentials), else why not.

    Only ``http(s)://`` URIs are probed: other stores are files or databases the
    MLflow client opens itself. Another web server on that address (HTTP 404) or a
    failing one (5xx) is refused here, in a second, instead of after the MLflow
    client's retries.
    """
    if not uri.startswith(("http://", "https://")):
        return None
    import requests

    reason = "no answer"
    for attempt in range(tries):
        try:
            status = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s).status_code
        except requests.RequestException as exc:
            reason = type(exc).__name__
        else:
            if status < 400 or status in (401, 403):  # an MLflow server, perhaps behind authentication
                return None
            reason = f"HTTP {status} on /health: is it an MLflow tracking server?"
        if attempt + 1 < tries:
            time.sleep(0.5)
    return reason


def unreachable_message(uri: str, reason: str) -> str:
    return (
        f"the MLflow tracking server {uri} does not answer ({reason}); start it (or fix tracking.uri / "
        "MLFLOW_TRACKING_URI), or set tracking.offline: true to run now and log when it answers"
    )


def _tracking_errors() -> tuple[type[BaseException], ...]:
    import requests
    from mlflow.exceptions import MlflowException

    return (MlflowException, requests.RequestException, OSError)


@dataclass
class _Run:
    spec: RunSpec
    run_dir: RunDir
    parent_run_id: str | None
    tags: dict[str, str] | None
    run_id: str | None = None
    backlog: list[tuple[StageKey, Mapping[str, Any], list[list[int]]]] = field(default_factory=list)


class GuardedTracker:
    """A :class:`Tracker` that goes offline on a tracking outage instead of failing the runs.

    Args:
        cfg: tracking settings; ``cfg.offline`` allows starting while the server is down.
        experiment: overrides ``cfg.experiment``.
        retry_s: seconds between attempts to reach the server while offline.
        final_wait_s: at the end of the runs, how long to keep trying a server that is
            down (e.g. restarting) before leaving the backlog for a re-run; once per tracker.
        **tracker_kwargs: passed to :class:`Tracker`.

    Raises:
        TrackingUnavailable: the server does not answer at the start and ``cfg.offline`` is false.
    """

    def __init__(
        self, cfg: TrackingConfig, experiment: str | None = None, *, retry_s: float = 30.0, final_wait_s: float = 45.0, **tracker_kwargs: Any
    ) -> None:
        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.cfg = cfg
        self.uri = resolve_tracking_uri(cfg)
        self.retry_s = retry_s
        self.final_wait_s = final_wait_s
        self._waited = False
        self._experiment = experiment
        self._kwargs = tracker_kwargs
        self._inner: Tracker | None = None
        self._runs: dict[str, _Run] = {}
        self._next_try = 0.0
        self.offline_reason: str | None = None
        reason = probe_tracking_uri(self.uri)
        if reason is None:
            try:
                self._inner = Tracker(cfg, experiment, **tracker_kwargs)
            except _tracking_errors() as exc:
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if reason is not None:
            if not cfg.offline:
                raise TrackingUnavailable(unreachable_message(self.uri, reason))
            self._go_offline(reason)

    # ------------------------------------------------------------ state
    @property
    def online(self) -> bool:
        return self.offline_reason is None and self._inner is not None

    def _go_offline(self, reason: Any) -> None:
        if self.offline_reason is None:
            _logger.warning("MLflow at %s unreachable (%s): the runs go on; results are logged when it answers", self.uri, reason)
        self.offline_reason = str(reason).splitlines()[0][:300] if str(reason) else type(reason).__name__
        self._next_try = time.monotonic() + self.retry_s

    def _available(self) -> bool:
        """Online, or back online after a successful retry."""
        if self.online:
            return True
        if time.monotonic() < self._next_try or probe_tracking_uri(self.uri, tries=1) is not None:
            self._next_try = max(self._next_try, time.monotonic() + self.retry_s)
            return False
        try:
            self._inner = self._inner or Tracker(self.cfg, self._experiment, **self._kwargs)
        except _tracking_errors() as exc:
            self._go_offline(exc)
            return False
        _logger.warning("MLflow at %s answers again: logging the stages that waited", self.uri)
        self.offline_reason = None
        return True

    def _flush(self, run: _Run) -> bool:
        """Open ``run``'s MLflow run if needed and send its backlog; ``False`` if the server failed."""
        assert self._inner is not None
        try:
            if run.run_id is None:
                run.run_id = self._inner.open_run(run.spec, run.run_dir, parent_run_id=run.parent_run_id, tags=run.tags)
            while run.backlog:
                key, info, sessions = run.backlog[0]
                self._inner.log_stage(run.run_id, run.spec, run.run_dir, key, info, sessions)
                run.backlog.pop(0)
            return True
        except _tracking_errors() as exc:
            self._go_offline(exc)
            return False

    def _flush_all(self) -> bool:
        return self._available() and all(self._flush(run) for run in self._runs.values())

    def _wait_for_server(self) -> None:
        """The runs are done but the server is down: give it ``final_wait_s`` to come back
        (a restart takes seconds) before the backlog is left for a re-run."""
        if self.online or self._waited:
            return
        self._waited = True
        deadline = time.monotonic() + self.final_wait_s
        while time.monotonic() < deadline:
            self._next_try = 0.0  # try now, whatever the retry interval
            if self._available():
                return
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    # ------------------------------------------------------------ Tracker's methods
    def open_run(self, spec: RunSpec, run_dir: RunDir, *, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        """The MLflow run id, or ``offline:<run dir>`` while the server is down."""
        run = _Run(spec, run_dir, parent_run_id, dict(tags) if tags else None)
        if self._available():
            self._flush(run)
        handle = run.run_id or f"{OFFLINE_PREFIX}{run_dir.path}"
        self._runs[handle] = run
        return handle

    def log_stage(self, run_id: str, spec: RunSpec, run_dir: RunDir, key: StageKey, info: Mapping[str, Any], sessions: list[list[int]]) -> None:
        self._runs[run_id].backlog.append((key, info, sessions))
        self._flush_all()

    def finish(self, run_id: str, spec: RunSpec, run_dir: RunDir, sessions: list[list[int]]) -> dict[str, float]:
        run = self._runs[run_id]
        self._wait_for_server()
        if self._flush_all() and run.run_id is not None:
            try:
                return self._inner.finish(run.run_id, spec, run_dir, sessions)  # type: ignore[union-attr]
            except _tracking_errors() as exc:
                self._go_offline(exc)
        return collect_results(run_dir, sessions).summary("test")

    def fail(self, run_id: str, error: str, status: str = "FAILED") -> None:
        run = self._runs.get(run_id)
        if run is None or not self._flush_all() or run.run_id is None:
            return  # the re-run reopens the MLflow run and ends it
        try:
            self._inner.fail(run.run_id, error, status=status)  # type: ignore[union-attr]
        except _tracking_errors() as exc:
            self._go_offline(exc)


# ------------------------------------------------------------------ what waits
def stages_waiting(run_dir: RunDir) -> list[str]:
    """Finished stages of ``run_dir`` not logged to MLflow yet (all of them without ``tracking.json``)."""
    done = sorted(str(p.relative_to(run_dir.path))[: -len(".done.json")] for p in Path(run_dir.path).rglob("*.done.json"))
    try:
        state = run_dir.read_json("tracking.json")
    except RunStateError:
        return done
    logged = set(state.get("logged", []))
    waiting = [k for k in done if k not in logged]
    if not waiting and not state.get("finished"):
        waiting.append("end of run")
    return waiting


def backlog_message(outcomes: Iterable[Any]) -> str | None:
    """One line if finished runs still wait to be logged (the server stayed down), else ``None``."""
    waiting: dict[str, int] = {}
    uri = None
    for outcome in outcomes:
        tracker = getattr(outcome, "tracker", None)
        if isinstance(tracker, GuardedTracker) and outcome.status != "FAILED":
            n = len(stages_waiting(outcome.run_dir))
            if n:
                waiting[str(outcome.run_dir.path)] = n
                uri = tracker.uri
    if not waiting:
        return None
    return (
        f"MLflow at {uri} did not answer: {sum(waiting.values())} stage(s) of {len(waiting)} run(s) wait to be logged "
        "(the results are safe in the run directories); re-running the same command logs them"
    )

