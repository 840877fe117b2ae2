"""A Ray worker killed in the middle of a stage: Ray retries the stage, the result is identical."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config_dict

from pipeline.config import config_from_dict
from pipeline.running.runner import execute, make_specs

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _kill_worker_mid_train(run_dir: Path, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the process running session_001/train once its first epoch checkpoint exists."""
    checkpoint = run_dir / "session_001" / "train_checkpoint.pt"
    events = run_dir / "events.jsonl"
    while not stop.is_set():
        if checkpoint.is_file() and events.is_file():
            starts = [e for e in map(json.loads, events.read_text().splitlines()) if e["stage"] == "session_001/train" and e["event"] == "start"]
            if starts:
                os.kill(starts[-1]["pid"], signal.SIGKILL)
                killed.append(starts[-1]["pid"])
                return
        time.sleep(0.005)


def test_worker_killed_mid_stage_is_retried_with_the_same_result(tmp_path, tiny_checkpoint):
    import ray

    train = {"epochs": 6}
    local = config_from_dict(tiny_config_dict(tmp_path / "local", tiny_checkpoint, data={"num_tasks": 2}, train=train,
                                              tracking={"enabled": False}))  # fmt: skip
    (reference,) = execute(make_specs(local), progress=False)
    cfg = config_from_dict(tiny_config_dict(tmp_path / "ray", tiny_checkpoint, data={"num_tasks": 2}, train=train, tracking={"enabled": False},
                                            resources={"executor": "ray", "max_retries": 1}))  # fmt: skip
    (spec,) = make_specs(cfg)
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_worker_mid_train, args=(Path(spec.run_dir), stop, killed), daemon=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        watcher.start()
        (outcome,) = execute([spec], progress=False)
    finally:
        stop.set()
        ray.shutdown()
    assert killed, "the worker was not killed"
    events = [json.loads(line) for line in Path(spec.run_dir, "events.jsonl").read_text().splitlines()]
    starts = [e["pid"] for e in events if e["stage"] == "session_001/train" and e["event"] == "start"]
    assert len(starts) == 2 and starts[0] == killed[0] != starts[1], starts  # retried in another worker
    assert outcome.status == "FINISHED"
    np.testing.assert_array_equal(outcome.results().test.to_numpy(), reference.results().test.to_numpy())
    assert Path(spec.run_dir, "session_001", "adapter.safetensors").read_bytes() == Path(
        reference.run_dir.path, "session_001", "adapter.safetensors").read_bytes()
