"""A tracking outage never stops the computation, and nothing is lost or logged twice.

A real ``mlflow server`` (sqlite backend) is killed in the middle of a run; the
run goes on to the end, a second run starts in offline mode while the server is
down, the server restarts on the same database, the same command is re-run, and
every metric in the server is compared with the same run directories logged to a
fresh store in one go.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import tiny_config_dict
from process_helpers import stop_process_group
from test_mlflow_server import STARTUP_TIMEOUT_S, _compose_allowed_hosts, _free_port, _get, _log_tail, _mlflow_command

from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.tracking.offline import backlog_message, stages_waiting
from pipeline.running.runner import execute, make_specs
from pipeline.running.state import RunDir

pytestmark = [pytest.mark.server, pytest.mark.slow]


def start_server(root: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    cmd = [
        *_mlflow_command(), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--allowed-hosts", _compose_allowed_hosts(),
    ]  # fmt: skip
    log = root / f"server-{time.time():.0f}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{_log_tail(log)}")
        try:
            if _get(f"http://127.0.0.1:{port}/health", timeout=2) == 200:
                return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_process_group(proc)
            pytest.fail(f"mlflow server not healthy after {STARTUP_TIMEOUT_S} s:\n{_log_tail(log)}")
        time.sleep(0.25)


def all_metrics(uri: str) -> dict[str, collections.Counter]:
    """Per run directory, every (key, step, value) the store holds, counted (system samples left out)."""
    from benchmarks.services import metric_counts

    return metric_counts(uri)


def test_server_killed_mid_run_then_restarted_logs_every_metric_once(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    for name in ("NO_PROXY", "no_proxy"):  # the MLflow client must not send 127.0.0.1 to a proxy
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"])))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    data = tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 3}, train={"epochs": 2},
                            tracking={"experiment": "outage", "uri": url})  # fmt: skip
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(data))
    root = tmp_path / "server"
    root.mkdir()

    # 1. unreachable at the start: one line, within 15 s
    started = time.monotonic()
    assert main(["run", str(config), "--no-progress", "--seeds", "0"]) == 2
    assert time.monotonic() - started < 15
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not answer" in err and "tracking.offline: true" in err, err

    # 2. the server dies after the first session is logged: the run still finishes
    cfg = config_from_dict(data)
    server = start_server(root, port)
    try:
        def kill_after_first_eval(spec, key, info):
            if str(key) == "session_000/eval":
                stop_process_group(server)

        (outcome,) = execute(make_specs(cfg, [0]), progress=False, on_stage=kill_after_first_eval)
    finally:
        stop_process_group(server)
    assert outcome.status == "FINISHED"
    assert len(list(Path(outcome.run_dir.path).rglob("*.done.json"))) == 1 + 3 * 4  # every stage computed
    waiting = stages_waiting(outcome.run_dir)
    assert "session_001/train" in waiting and "session_000/eval" not in waiting

    # 3. offline mode while the server is down: the second seed runs and waits to be logged
    offline = config_from_dict({**data, "tracking": {**data["tracking"], "offline": True}})
    (second,) = execute(make_specs(offline, [1]), progress=False)
    assert second.status == "FINISHED" and len(stages_waiting(second.run_dir)) == 13
    message = backlog_message([outcome, second])
    assert message.startswith(f"MLflow at {url} did not answer: {len(waiting) + 13} stage(s) of 2 run(s) wait to be logged")
    assert "re-running the same command logs them" in message

    # 4. restarted on the same database; the same command logs everything, once
    server = start_server(root, port)
    try:
        assert main(["run", str(config), "--no-progress", "--seeds", "0", "1"]) == 0
        logged = all_metrics(url)
        assert main(["run", str(config), "--no-progress", "--seeds", "0", "1"]) == 0  # a finished run logs nothing again
        assert all_metrics(url) == logged
        from mlflow import MlflowClient

        runs = MlflowClient(url).search_runs([MlflowClient(url).get_experiment_by_name("outage").experiment_id])
        assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    finally:
        stop_process_group(server)
    for o in (outcome, second):
        assert stages_waiting(o.run_dir) == []

    # 5. the reference: the same run directories logged to a fresh store in one go
    reference = tmp_path / "reference"
    for o in (outcome, second):
        shutil.copytree(o.run_dir.path, reference / Path(o.run_dir.path).name)
        RunDir(reference / Path(o.run_dir.path).name).file("tracking.json").unlink()
        (reference / Path(o.run_dir.path).name / ".lock").unlink(missing_ok=True)
    ref_cfg = config_from_dict({**data, "output_dir": str(reference), "tracking": {"experiment": "outage", "uri": f"sqlite:///{tmp_path / 'ref.db'}"}})
    execute(make_specs(ref_cfg, [0, 1]), progress=False)
    expected = all_metrics(f"sqlite:///{tmp_path / 'ref.db'}")
    assert set(logged) == set(expected) and len(logged) == 2
    for name in expected:
        assert logged[name] == expected[name], name
        assert max(logged[name].values()) == 1  # no metric value twice
        assert sum(1 for k, _, _ in logged[name] if k == "acc/test/task_000") == 3
