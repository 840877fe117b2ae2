"""Bad inputs are refused in one line naming the key, before anything is created."""

from __future__ import annotations

import json
import logging
import socket

import pytest
from conftest import TINY_OVERRIDES, tiny_config_dict

from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.preflight import resume_conflicts


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
    from pipeline.preflight import check_config

    with caplog.at_level(logging.WARNING, logger="pipeline.preflight"):
        check_config(config_from_dict(tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 3})))
    assert "data.num_tasks=3 does not divide the 10 classes of 'digits': tasks of [4, 3, 3] classes" in caplog.text


def test_resume_conflicts_name_the_keys():
    run = config_from_dict({"method": {"inflora": {"rank": 4}}, "train": {"lr": 0.1}, "seeds": [0], "resources": {"cpus_per_stage": 1}})
    ask = config_from_dict({"method": {"inflora": {"rank": 8}}, "train": {"lr": 0.1}, "seeds": [1, 2], "resources": {"cpus_per_stage": 2}})
    assert resume_conflicts(run, ask) == ["method.inflora.rank"]
    assert resume_conflicts(run, run) == []


def test_resume_with_another_rank_is_refused(tmp_path, tiny_checkpoint, capsys):
    from pipeline.config import config_from_dict
    from pipeline.runner import make_specs

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
