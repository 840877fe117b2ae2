"""``inflora sweep TARGET --dashboard``: optuna-dashboard on the sweep's study, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from process_helpers import stop_process_group
from sweep_fixtures import sweep_checkpoint, tiny_sweep_dict  # noqa: F401 - fixture

from sweeps.config import load_sweep

pytestmark = pytest.mark.server

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# (rank, lamb) -> objective of three finished trials, as a sweep would have stored them
TRIALS = [((2, 0.9), 0.61), ((4, 0.95), 0.72), ((8, 0.99), 0.68)]


def _get_json(url: str):
    with _DIRECT.open(url, timeout=5) as response:
        return json.loads(response.read())


def _write_study(sweep) -> None:
    import optuna

    study = optuna.create_study(study_name=sweep.study_name, storage=sweep.storage_url, direction="maximize")
    dists = {"rank": optuna.distributions.IntDistribution(1, 8), "lamb": optuna.distributions.FloatDistribution(0.8, 0.999)}
    for (rank, lamb), value in TRIALS:
        study.add_trial(optuna.trial.create_trial(params={"rank": rank, "lamb": lamb}, distributions=dists, value=value))


def test_dashboard_lists_the_sweeps_trials(tmp_path, sweep_checkpoint):  # noqa: F811
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep_dict(tmp_path, sweep_checkpoint)))
    sweep = load_sweep(str(path), [])
    missing = subprocess.run([sys.executable, "-m", "pipeline.cli", "sweep", str(path), "--dashboard"], capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "no Optuna study yet" in missing.stderr  # one line, before any sweep ran
    sweep.dir.mkdir(parents=True, exist_ok=True)
    _write_study(sweep)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "sweep", str(path), "--dashboard", "--port", str(port)],
                            env=os.environ.copy(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                studies = _get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                assert time.time() < deadline, "optuna-dashboard did not come up"
                time.sleep(0.3)
        (study,) = studies
        assert study["study_name"] == sweep.study_name and study["directions"] == ["maximize"]
        detail = _get_json(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}")
        listed = [({p["name"]: p["param_external_value"] for p in t["params"]}, t["values"], t["state"]) for t in detail["trials"]]
        assert listed == [({"rank": str(r), "lamb": str(lamb)}, [v], "Complete") for (r, lamb), v in TRIALS]
        assert [t["number"] for t in detail["best_trials"]] == [1]
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert {line.split()[3] for line in listening.splitlines() if line.strip()} == {f"127.0.0.1:{port}"}
    finally:
        stop_process_group(proc)
