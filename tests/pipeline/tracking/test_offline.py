"""GuardedTracker: an outage marks the tracker offline; when the server answers, a sync logs
every stage that waited, in order, once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.tracking import offline
from pipeline.config import TrackingConfig
from pipeline.running.state import StageKey


class FakeRunDir:
    """The part of :class:`pipeline.running.state.RunDir` a tracker's sync reads: the finished stages."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.done: list[StageKey] = []


class FakeTracker:
    """Stands for :class:`pipeline.tracking.tracker.Tracker`; fails every call while ``down``.

    Its sync logs each finished stage of the run directory not logged yet, as the real one does.
    """

    down = False
    logged: list[tuple[str, str]] = []
    created = 0

    def __init__(self, cfg, experiment=None, **kwargs):
        self._check()
        FakeTracker.created += 1
        self._sent: set[tuple[Path, str]] = set()

    def _check(self):
        if FakeTracker.down:
            raise OSError("connection refused")

    def open_run(self, spec, run_dir, parent_run_id=None, tags=None):
        self._check()
        return "run-1"

    def sync(self, run_dir):
        for key in run_dir.done:
            if (run_dir.path, str(key)) not in self._sent:
                self._check()
                self._sent.add((run_dir.path, str(key)))
                FakeTracker.logged.append(("run-1", str(key)))

    def finish(self, run_dir):
        self._check()
        return {"final": 1.0}

    def fail(self, run_dir, error, status="FAILED"):
        self._check()


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(offline, "Tracker", FakeTracker)
    FakeTracker.down, FakeTracker.logged, FakeTracker.created = False, [], 0
    return FakeTracker


def _finish_stage(tracker, run_dir, key):
    run_dir.done.append(key)
    tracker.sync(run_dir)


def test_outage_mid_run_logs_what_waited_once_in_order(fake):
    tracker = offline.GuardedTracker(TrackingConfig(uri="sqlite:///unused.db"), retry_s=0.0)
    run_dir = FakeRunDir("/runs/a")
    assert tracker.open_run(None, run_dir) == "run-1"
    keys = [StageKey.split(), StageKey(0, "design"), StageKey(0, "train"), StageKey(0, "eval")]
    _finish_stage(tracker, run_dir, keys[0])
    fake.down = True
    _finish_stage(tracker, run_dir, keys[1])  # no exception: offline
    _finish_stage(tracker, run_dir, keys[2])
    assert not tracker.online and fake.logged == [("run-1", "split")]
    fake.down = False
    _finish_stage(tracker, run_dir, keys[3])  # answers again: the stages that waited go first
    assert tracker.online
    assert fake.logged == [("run-1", str(k)) for k in keys]
    assert tracker.finish(run_dir) == {"final": 1.0}
    assert fake.logged == [("run-1", str(k)) for k in keys]  # nothing twice


def test_back_online_syncs_every_run_not_only_the_one_that_finished_a_stage(fake):
    tracker = offline.GuardedTracker(TrackingConfig(uri="sqlite:///unused.db"), retry_s=0.0)
    a, b = FakeRunDir("/runs/a"), FakeRunDir("/runs/b")
    tracker.open_run(None, a)
    tracker.open_run(None, b)
    fake.down = True
    _finish_stage(tracker, a, StageKey.split())
    fake.down = False
    _finish_stage(tracker, b, StageKey.split())
    assert sorted(fake.logged) == [("run-1", "split")] * 2


def test_retry_waits_retry_s(fake):
    tracker = offline.GuardedTracker(TrackingConfig(uri="sqlite:///unused.db"), retry_s=3600.0)
    run_dir = FakeRunDir("/runs/a")
    tracker.open_run(None, run_dir)
    fake.down = True
    _finish_stage(tracker, run_dir, StageKey.split())
    fake.down = False
    _finish_stage(tracker, run_dir, StageKey(0, "design"))  # within retry_s: not tried again
    assert fake.logged == [] and not tracker.online


def test_down_at_the_start_needs_offline_mode(fake):
    fake.down = True
    with pytest.raises(offline.TrackingUnavailable, match=r"does not answer \(OSError: connection refused\).*tracking.offline: true"):
        offline.GuardedTracker(TrackingConfig(uri="sqlite:///unused.db"))
    tracker = offline.GuardedTracker(TrackingConfig(uri="sqlite:///unused.db", offline=True), retry_s=0.0)
    run_dir = FakeRunDir("/runs/a")
    assert tracker.open_run(None, run_dir) == "offline:/runs/a"
    _finish_stage(tracker, run_dir, StageKey.split())
    fake.down = False
    _finish_stage(tracker, run_dir, StageKey(0, "design"))  # opens the MLflow run, then logs both
    assert fake.logged == [("run-1", "split"), ("run-1", "session_000/design")]
