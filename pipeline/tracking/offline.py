"""Tracking that never stops the computation: an MLflow outage marks the tracker offline.

:class:`GuardedTracker` is a :class:`~pipeline.tracking.tracker.RunTracker` around
:class:`~pipeline.tracking.tracker.Tracker`. A failing MLflow call (server killed,
network down) marks it offline instead of raising: stages go on, and what could
not be logged stays recorded in the run directory (``tracking.json`` lists the
stages that were logged; the stage markers hold every result). There is no
backlog to keep: while offline, the tracker asks the server again every
``retry_s`` seconds and, once it answers, syncs every run it holds (the same
:meth:`~pipeline.tracking.tracker.Tracker.sync` as after each stage); a later re-run of
the same command syncs whatever is left. Metrics carry their stage marker's
time, so a batch sent twice is stored once (see :mod:`pipeline.tracking.timestamps`).

MLflow's HTTP client retries a refused connection for minutes by default; the
driver's retries are shortened here (``MLFLOW_HTTP_REQUEST_*``, unless set).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TrackingConfig
from ..reporting.results import collect_results
from ..running.stages import RunSpec, method_of
from ..running.state import RunDir
from .store import resolve_tracking_uri
from .tracker import RunTracker, Tracker

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
    """A run to keep in sync: how to open its MLflow run, and whether it is open."""

    spec: RunSpec
    run_dir: RunDir
    parent_run_id: str | None
    tags: dict[str, str] | None
    run_id: str | None = None


class GuardedTracker(RunTracker):
    """A :class:`Tracker` that goes offline on a tracking outage instead of failing the runs.

    Args:
        cfg: tracking settings; ``cfg.offline`` allows starting while the server is down.
        experiment: overrides ``cfg.experiment``.
        retry_s: seconds between attempts to reach the server while offline.
        final_wait_s: at the end of the runs, how long to keep trying a server that is
            down (e.g. restarting) before leaving the rest for a re-run; once per tracker.
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
        self._runs: dict[Path, _Run] = {}
        self._behind = False  # runs may have stages that an outage kept from being logged
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
        self._behind = True

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

    def _guarded(self, call, *args: Any) -> bool:
        """Run a call on the tracker; ``False`` (and offline) if the server failed."""
        try:
            call(*args)
            return True
        except _tracking_errors() as exc:
            self._go_offline(exc)
            return False

    def _sync_run(self, run: _Run) -> None:
        assert self._inner is not None
        if run.run_id is None:
            run.run_id = self._inner.open_run(run.spec, run.run_dir, parent_run_id=run.parent_run_id, tags=run.tags)
        self._inner.sync(run.run_dir)

    def _sync(self, run: _Run) -> bool:
        """Sync ``run`` (every run, after an outage); ``False`` while the server does not answer."""
        if not self._available():
            return False
        if not self._behind:
            return self._guarded(self._sync_run, run)
        if all(self._guarded(self._sync_run, other) for other in list(self._runs.values())):
            self._behind = False
        return not self._behind

    def _wait_for_server(self) -> None:
        """The runs are done but the server is down: give it ``final_wait_s`` to come back
        (a restart takes seconds) before the rest is left for a re-run."""
        if self.online or self._waited:
            return
        self._waited = True
        deadline = time.monotonic() + self.final_wait_s
        while time.monotonic() < deadline:
            self._next_try = 0.0  # try now, whatever the retry interval
            if self._available():
                return
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    # ------------------------------------------------------------ RunTracker
    def open_run(self, spec: RunSpec, run_dir: RunDir, *, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        """The MLflow run id, or ``offline:<run dir>`` while the server is down."""
        run = _Run(spec, run_dir, parent_run_id, dict(tags) if tags else None)
        self._runs[run_dir.path] = run
        if self._available():
            self._guarded(self._sync_run, run)
        return run.run_id or f"{OFFLINE_PREFIX}{run_dir.path}"

    def sync(self, run_dir: RunDir) -> None:
        self._sync(self._runs[run_dir.path])

    def finish(self, run_dir: RunDir) -> dict[str, float]:
        run = self._runs[run_dir.path]
        self._wait_for_server()
        if self._sync(run):
            try:
                return self._inner.finish(run_dir)  # type: ignore[union-attr]
            except _tracking_errors() as exc:
                self._go_offline(exc)
        return collect_results(run_dir, method_of(run.spec.config).sessions(run.spec.config.data.num_tasks)).summary("test")

    def fail(self, run_dir: RunDir, error: str, status: str = "FAILED") -> None:
        run = self._runs.get(run_dir.path)
        if run is None or not self._sync(run):
            return  # the re-run reopens the MLflow run and ends it
        self._guarded(self._inner.fail, run_dir, error, status)  # type: ignore[union-attr]

    def open_comparison(self, cfg, methods: list[str], seeds: list[int]) -> str | None:
        """The comparison's parent run; ``None`` while the server is down (the runs then log unnested)."""
        if not self._available():
            return None
        try:
            return self._inner.open_comparison(cfg, methods, seeds)  # type: ignore[union-attr]
        except _tracking_errors() as exc:
            self._go_offline(exc)
            return None

    def finish_comparison(self, run_id: str, runs, summary) -> None:
        if self._available():
            self._guarded(self._inner.finish_comparison, run_id, runs, summary)  # type: ignore[union-attr]


# ------------------------------------------------------------------ what waits
def stages_waiting(run_dir: RunDir) -> list[str]:
    """Finished stages of ``run_dir`` not logged to MLflow yet (all of them without ``tracking.json``)."""
    done = run_dir.finished_stages()
    state = run_dir.read_tracking()
    if state is None:
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

