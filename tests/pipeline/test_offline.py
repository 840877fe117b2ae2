"""GuardedTracker: an outage marks the tracker offline, the backlog is sent in order when it answers."""

from __future__ import annotations

import pytest

from pipeline import offline
from pipeline.config import TrackingConfig
from pipeline.state import StageKey


class FakeTracker:
    """Stands for :class:`pipeline.tracking.Tracker`; fails every call while ``down``."""

    down = False
    logged: list[tuple[str, str]] = []
    created = 0

    def __init__(self, cfg, experiment=None, **kwargs):
        self._check()
        FakeTracker.created += 1

    def _check(self):
        if FakeTracker.down:
            raise OSError("connection refused")

    def open_run(self, spec, run_dir, parent_run_id=None, tags=None):
        self._check()
        return "run-1"

    def log_stage(self, run_id, spec, run_dir, key, info, sessions):
        self._check()
        FakeTracker.logged.append((run_id, str(key)))

    def finish(self, run_id, spec, run_dir, sessions):
        self._check()
        return {"final": 1.0}

    def fail(self, run_id, error, status="FAILED"):
        self._check()


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(offline, "Tracker", FakeTracker)
    FakeTracker.down, FakeTracker.logged, FakeTracker.created = False, [], 0
    return FakeTracker


def test_outage_mid_run_keeps_a_backlog_and_sends_it_once_in_order(fake):
    tracker = offline.GuardedTracker(TrackingConfig(uri="sqlite:///unused.db"), retry_s=0.0)
    handle = tracker.open_run(None, None)
    assert handle == "run-1"
    keys = [StageKey.split(), StageKey(0, "design"), StageKey(0, "train"), StageKey(0, "eval")]
    tracker.log_stage(handle, None, None, keys[0], {}, [])
    fake.down = True
    tracker.log_stage(handle, None, None, keys[1], {}, [])  # no exception: offline
    tracker.log_stage(handle, None, None, keys[2], {}, [])
    assert not tracker.online and fake.logged == [("run-1", "split")]
    fake.down = False
    tracker.log_stage(handle, None, None, keys[3], {}, [])  # answers again: the backlog goes first
    assert tracker.online
    assert fake.logged == [("run-1", str(k)) for k in keys]
    assert tracker.finish(handle, None, None, []) == {"final": 1.0}


def test_retry_waits_retry_s(fake):
    tracker = offline.GuardedTracker(TrackingConfig(uri="sqlite:///unused.db"), retry_s=3600.0)
    handle = tracker.open_run(None, None)
    fake.down = True
    tracker.log_stage(handle, None, None, StageKey.split(), {}, [])
    fake.down = False
    tracker.log_stage(handle, None, None, StageKey(0, "design"), {}, [])  # within retry_s: not tried again
    assert fake.logged == [] and not tracker.online


def test_down_at_the_start_needs_offline_mode(fake):
    fake.down = True
    with pytest.raises(offline.TrackingUnavailable, match=r"does not answer \(OSError: connection refused\).*tracking.offline: true"):
        offline.GuardedTracker(TrackingConfig(uri="sqlite:///unused.db"))
    tracker = offline.GuardedTracker(TrackingConfig(uri="sqlite:///unused.db", offline=True), retry_s=0.0)
    handle = tracker.open_run(None, type("RunDir", (), {"path": "/runs/a"})())
    assert handle == "offline:/runs/a"
    tracker.log_stage(handle, None, None, StageKey.split(), {}, [])
    fake.down = False
    tracker.log_stage(handle, None, None, StageKey(0, "design"), {}, [])  # opens the MLflow run, then logs both
    assert fake.logged == [("run-1", "split"), ("run-1", "session_000/design")]
