"""Deterministic MLflow timestamps, so that sending a stage's metrics twice logs them once.

MLflow's SQL store ignores a metric whose (key, value, step, timestamp) it already
holds. A stage's metrics are stamped with the time its marker was written, not
the time they are sent: a batch that reached the server although its answer was
lost (an outage), sent again later, adds nothing.
"""

from __future__ import annotations

import time

from ..running.state import RunDir, StageKey

__all__ = ["stage_timestamp_ms"]


def stage_timestamp_ms(run_dir: RunDir, key: StageKey) -> int:
    """Milliseconds since the epoch at which ``key``'s marker was written (now if it has none)."""
    try:
        return int(run_dir.marker(key).stat().st_mtime * 1000)
    except OSError:
        return int(time.time() * 1000)
