"""MLflow system metrics (CPU, RAM, disk, network; GPU with pynvml) for each tracked run.

MLflow's :class:`~mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`
samples this machine in a thread of the driver and logs ``system/*`` metrics, which
the run page shows in its "System metrics" tab. On one machine that is the
machine the stages run on; in the compose stack it is the runner's container
(psutil reads the host's CPU counters there), not each worker.

The sampling interval is :data:`DEFAULT_INTERVAL_S` (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
overrides it): one sample, a ``get_run`` and, every few samples, one ``log_batch``
cost a few milliseconds of one core (``benchmarks/system_metrics_overhead.py``
measures it), under 0.1 % of a stage's cores. ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false``
turns it off.
"""

from __future__ import annotations

import logging
import os

__all__ = ["DEFAULT_INTERVAL_S", "SystemMetrics", "system_metrics_enabled"]

_logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 10.0
_ENABLE_VAR = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"


def system_metrics_enabled() -> bool:
    """On unless ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` says false (MLflow's own switch)."""
    return os.environ.get(_ENABLE_VAR, "true").strip().lower() not in ("false", "0", "no", "off")


def _monitor_class():
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class _Monitor(SystemMetricsMonitor):
        """Publishes the samples taken since the last log when stopped: MLflow's drops
        them, so a run shorter than one logging period would show no system metrics."""

        def finish(self) -> None:
            thread = self._process
            super().finish()
            if thread is None:
                return
            pending = self.aggregate_metrics()
            if pending:
                self.publish_metrics(pending)
                self.mlflow_logger.flush()

    return _Monitor


class SystemMetrics:
    """One monitor per open MLflow run of a tracking store.

    Args:
        tracking_uri: the store the runs live in.
        interval_s: seconds between samples.
    """

    def __init__(self, tracking_uri: str, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.tracking_uri = tracking_uri
        self.interval_s = interval_s
        self._monitors: dict[str, object] = {}

    def start(self, run_id: str, *, resume: bool) -> None:
        """Start sampling for ``run_id`` (steps continue after a reopened run's last one)."""
        if run_id in self._monitors or not system_metrics_enabled():
            return
        # MLflow's INFO lines (started, stopped, no GPU) would print for every run in the CLI's output
        logging.getLogger("mlflow.system_metrics.system_metrics_monitor").setLevel(logging.WARNING)
        try:
            monitor = _monitor_class()(run_id, sampling_interval=self.interval_s, resume_logging=resume, tracking_uri=self.tracking_uri)
        except ImportError as exc:  # psutil missing: the run goes on without them
            _logger.warning("no system metrics for run %s: %s", run_id, exc)
            return
        monitor.start()
        self._monitors[run_id] = monitor

    def stop(self, run_id: str) -> None:
        """Log what was sampled since the last log and stop (before the run is terminated)."""
        monitor = self._monitors.pop(run_id, None)
        if monitor is not None:
            monitor.finish()
