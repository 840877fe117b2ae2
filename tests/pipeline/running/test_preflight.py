"""Bad inputs are refused in one line naming the key, before anything is created."""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES, tiny_config_dict

from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.running.preflight import resume_conflicts

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _refused(tmp_path, capsys, cfg: dict, *extra: str) -> str:
    """Run ``inflora run`` on ``cfg``: it must exit 2 with one line and create nothing."""
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(cfg))
    assert main(["run", str(path), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("inflora: error: ")
    runs = tmp_path / "runs"
    assert not (runs.is_dir() and any(runs.iterdir())), "a run directory was created"
    assert not (tmp_path / "mlflow.db").exists(), "the MLflow store was touched"
    return err


@pytest.mark.parametrize(
    "sections, extra, expected",
    [
        ({"method": {"rank": 33}}, (), "method.inflora.rank=33 is larger than the backbone's width 32"),
        ({"method": {"blocks": 3}}, (), "method.inflora.blocks=3 is more than the backbone's 2 blocks"),
        ({"method": {"blocks": [0, 2]}}, (), "method.inflora.blocks=[0, 2] holds indices outside 0..1"),
        ({"data": {"num_tasks": 11}}, (), "data.num_tasks=11 is more than the 10 classes of 'digits'"),
        ({"data": {"image_size": 16}}, (), "data.image_size=16 differs from the backbone's img_size 8"),
        ({"backbone": {"overrides": {**TINY_OVERRIDES, "embed_dim": 64}}}, (), "does not fit vit_tiny_patch16_224"),
        ({"data": {"name": "cifar100", "root": "/nonexistent/cifar", "num_tasks": 10}}, (), "data.root /nonexistent/cifar does not exist"),
        ({}, ("--seeds", "-1"), "seeds must be non-negative integers, got -1"),
    ],
    ids=["rank", "blocks-int", "blocks-list", "num-tasks", "image-size", "checkpoint-shape", "data-root", "negative-seed"],
)
def test_bad_input_refused_before_anything_exists(tmp_path, tiny_checkpoint, capsys, sections, extra, expected):
    err = _refused(tmp_path, capsys, tiny_config_dict(tmp_path, tiny_checkpoint, **sections), *extra)
    assert expected in err, err


def test_output_dir_that_is_a_file(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "afile").write_text("x")
    err = _refused(tmp_path, capsys, tiny_config_dict(tmp_path, tiny_checkpoint, output_dir=str(tmp_path / "afile")))
    assert f"output_dir {tmp_path / 'afile'} is a file, not a directory" in err


def test_unreachable_tracking_server_refused_in_seconds(tmp_path, tiny_checkpoint, capsys):
    import time

    url = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    err = _refused(tmp_path, capsys, tiny_config_dict(tmp_path, tiny_checkpoint, tracking={"uri": url}))
    assert time.monotonic() - started < 15
    assert f"the MLflow tracking server {url} does not answer" in err and "tracking.offline: true" in err


def test_empty_config_file_is_an_error(tmp_path, capsys):
    path = tmp_path / "empty.yaml"
    path.write_text("\n# nothing\n")
    assert main(["run", str(path)]) == 2
    assert f"config file {path} is empty" in capsys.readouterr().err


def test_mistyped_backbone_suggests_near_names_only(tmp_path, tiny_checkpoint, capsys):
    cfg = tiny_config_dict(tmp_path, tiny_checkpoint)
    cfg["backbone"]["name"] = "vit_tiny_patch16_22"
    err = _refused(tmp_path, capsys, cfg)
    assert "similar names: ['vit_tiny_patch16_224'" in err
    hint = err.split("similar names: ")[1]
    assert "resnet" not in hint and "vit_huge" not in hint and len(eval(hint)) <= 6  # noqa: S307 - a printed list


def test_uneven_tasks_are_said(tmp_path, tiny_checkpoint, caplog):
    from pipeline.config import config_from_dict
    from pipeline.running.preflight import check_config

    with caplog.at_level(logging.WARNING, logger="pipeline.running.preflight"):
        check_config(config_from_dict(tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 3})))
    assert "data.num_tasks=3 does not divide the 10 classes of 'digits': tasks of [4, 3, 3] classes" in caplog.text


def test_resume_conflicts_name_the_keys():
    run = config_from_dict({"method": {"inflora": {"rank": 4}}, "train": {"lr": 0.1}, "seeds": [0], "resources": {"cpus_per_stage": 1}})
    ask = config_from_dict({"method": {"inflora": {"rank": 8}}, "train": {"lr": 0.1}, "seeds": [1, 2], "resources": {"cpus_per_stage": 2}})
    assert resume_conflicts(run, ask) == ["method.inflora.rank"]
    assert resume_conflicts(run, run) == []


def test_resume_with_another_rank_is_refused(tmp_path, tiny_checkpoint, capsys):
    from pipeline.config import config_from_dict
    from pipeline.running.runner import make_specs

    cfg = tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2}, tracking={"enabled": False})
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))
    assert main(["run", str(path), "--no-progress"]) == 0
    (spec,) = make_specs(config_from_dict(cfg))
    capsys.readouterr()
    for args in (["--set", "method.inflora.rank=3", "--resume", spec.run_dir], [str(path), "--set", "method.inflora.rank=3", "--resume", spec.run_dir]):
        assert main(["run", "--no-progress", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "method.inflora.rank (2 in the run, 3 asked)" in err, err
    assert main(["run", "--no-progress", str(path), "--resume", spec.run_dir]) == 0  # the same config resumes
    out = capsys.readouterr().out
    assert re.search(rf"resuming {re.escape(spec.run_dir)}: (\d+) of \1 stages already done, skipped", out), out


@pytest.mark.parametrize("kind", ["png", "directory"])
def test_a_config_that_is_not_a_yaml_file_is_one_line(tmp_path, capsys, kind):
    if kind == "png":
        path = tmp_path / "plot.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
        expected = f"config file {path} is not a text file (binary data, e.g. an image); expected a YAML file"
    else:
        path = tmp_path / "configs"
        path.mkdir()
        expected = f"config file {path} is a directory; expected a YAML file"
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"inflora: error: {expected}"
    assert not (tmp_path / "runs").exists()


def test_an_empty_data_root_is_refused(tmp_path, tiny_checkpoint, capsys):
    root = tmp_path / "cifar"
    root.mkdir()
    cfg = tiny_config_dict(tmp_path, tiny_checkpoint, data={"name": "cifar100", "root": str(root), "num_tasks": 10})
    err = _refused(tmp_path, capsys, cfg)
    assert f"data.root {root} is empty; expected the files of data set 'cifar100' there" in err


def test_the_local_executor_refuses_a_gpu_this_machine_lacks(tmp_path, tiny_checkpoint, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = tiny_config_dict(tmp_path, tiny_checkpoint, resources={"executor": "local", "gpus_per_stage": 1})
    err = _refused(tmp_path, capsys, cfg)
    assert "resources.gpus_per_stage=1: the local executor runs every stage in this process, and this machine has no GPU" in err


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/health`` answers ``HEALTH``; every other path fails with 500 (a tracking server that is not well)."""

    HEALTH = 200

    def do_GET(self):  # noqa: N802 - the http.server API
        self.send_response(self.HEALTH if self.path.startswith("/health") else 500)
        self.end_headers()

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture
def web_server():
    """Factory: an HTTP server on 127.0.0.1 whose ``/health`` answers ``status``; yields its URL."""
    servers = []

    def start(status: int) -> str:
        handler = type("Handler", (_Handler,), {"HEALTH": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_tracking_server_that_fails_leaves_no_run_directory(tmp_path, tiny_checkpoint, capsys, web_server):
    """It answers the probe, then fails the MLflow calls: refused, and the run directory the
    driver had made (``.lock``, ``run.json``) is gone again."""
    url = web_server(200)
    err = _refused(tmp_path, capsys, tiny_config_dict(tmp_path, tiny_checkpoint, tracking={"uri": url}))
    assert f"the MLflow tracking server {url} does not answer" in err


def test_another_web_server_is_refused_before_ray_starts(tmp_path, tiny_checkpoint, web_server):
    """A wrong port that answers HTTP 404 is refused by the preflight: seconds, Ray never imported
    (before: after Ray had started and the MLflow client had tried, 15 s here)."""
    url = web_server(404)
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(tiny_config_dict(tmp_path, tiny_checkpoint, tracking={"uri": url}, resources={"executor": "ray"})))
    code = (
        "import sys, time; from pipeline.cli import main\n"
        f"rc = main(['run', {str(path)!r}, '--no-progress'])\n"
        "print('RC', rc, 'RAY', 'ray' in sys.modules)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    elapsed = time.monotonic() - started
    assert "RC 2 RAY False" in done.stdout, done.stdout + done.stderr[-2000:]
    assert f"{url} does not answer (HTTP 404 on /health: is it an MLflow tracking server?)" in done.stderr
    assert not (tmp_path / "runs").exists()
    assert elapsed < 30, elapsed  # the interpreter, torch and timm: ~4 s on an idle machine
