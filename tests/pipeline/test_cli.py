"""The `inflora` command line: errors are one clear line, outputs point to the results."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_config_dict

from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.data import DataSource, DatasetError, make_split, register_dataset
from pipeline.running.runner import RunFailed, execute, make_specs
from process_helpers import heavy_imports_of


def write_config(tmp_path, cfg: dict):
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


@pytest.mark.parametrize("kind", ["bad-value", "missing", "directory", "png"])
def test_a_bad_config_is_refused_before_torch_timm_ray_or_mlflow_is_imported(tmp_path, kind):
    """The refusal takes the interpreter's start and the validation only (about a second), not the
    seconds of importing torch, timm, Ray and MLflow (issue 21, item 10)."""
    path = tmp_path / {"bad-value": "bad.yaml", "missing": "nope.yaml", "directory": "configs", "png": "plot.png"}[kind]
    if kind == "bad-value":
        path.write_text("method:\n  inflora:\n    lamb: 0\n")
    elif kind == "directory":
        path.mkdir()
    elif kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    code = f"from pipeline.cli import main\nassert main(['run', {str(path)!r}, '--no-progress']) == 2\n"
    assert heavy_imports_of(code) == []
    assert not (tmp_path / "runs").exists()


def test_every_error_printed_as_one_line_names_an_existing_class():
    """The CLI finds these classes by module name (so as not to import the modules): a module moved
    without this table would turn its errors into tracebacks."""
    import importlib

    from pipeline.cli import _USER_ERRORS

    for module, name in _USER_ERRORS:
        assert issubclass(getattr(importlib.import_module(module), name), Exception), (module, name)


def test_run_eval_report_and_resume(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2}))
    assert main(["run", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy (%) R[after session, task]" in out and "after_001" in out
    assert "run directories:" in out and "MLflow: sqlite:///" in out and "inflora ui" in out
    (spec,) = make_specs(config_from_dict(json.loads(path.read_text())))
    assert main(["eval", spec.run_dir]) == 0
    out = capsys.readouterr().out
    assert "final_acc_task_mean" in out and "forgetting" in out
    assert main(["eval", spec.run_dir, "--split", "val"]) == 0
    assert main(["report", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--runs"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "inflora" in out and "±" in out
    # resuming a finished run redoes nothing and prints the same matrix
    events = (tmp_path / "runs").rglob("events.jsonl")
    before = sum(len(p.read_text().splitlines()) for p in events)
    assert main(["run", "--resume", spec.run_dir, "--no-progress"]) == 0
    after = sum(len(p.read_text().splitlines()) for p in (tmp_path / "runs").rglob("events.jsonl"))
    assert before == after


def test_bad_config_is_one_line_error(tmp_path, capsys):
    path = write_config(tmp_path, {"train": {"lr": -1}})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("inflora: error: train.lr must be > 0")
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_missing_checkpoint_without_recipe(tmp_path, capsys):
    cfg = tiny_config_dict(tmp_path, tmp_path / "nope.safetensors")
    assert main(["run", str(write_config(tmp_path, cfg)), "--no-progress"]) == 2
    assert "backbone checkpoint not found" in capsys.readouterr().err


def test_rank_larger_than_dimension_fails_the_run_clearly(tmp_path, tiny_checkpoint):
    cfg = config_from_dict(tiny_config_dict(tmp_path, tiny_checkpoint, method={"rank": 33}, tracking={"enabled": False}))
    with pytest.raises(RunFailed, match="LoRA rank 33 is larger than the 32 input dimensions"):
        execute(make_specs(cfg), progress=False)


def test_a_task_without_samples_is_a_clear_error():
    @register_dataset("test_missing_class")
    def _source(cfg, normalization=None):  # class 3 has training but no test samples
        import torch
        from torch.utils.data import TensorDataset

        y_train = np.array([0, 1, 2, 3] * 4)
        y_test = np.array([0, 1, 2] * 2)
        return DataSource(
            "test_missing_class",
            TensorDataset(torch.zeros(16, 1), torch.from_numpy(y_train)),
            TensorDataset(torch.zeros(6, 1), torch.from_numpy(y_test)),
            y_train,
            y_test,
            ["a", "b", "c", "d"],
            (1, 1, 1),
        )

    from pipeline.config import DataConfig
    from pipeline.data import load_dataset

    source = load_dataset(DataConfig(name="test_missing_class", num_tasks=4))
    with pytest.raises(DatasetError, match=r"task \d \(classes \[3\]\) has no test samples"):
        make_split(source, 4, seed=0, class_order="fixed")
    with pytest.raises(DatasetError, match="num_tasks=5 is more than the 4 classes"):
        make_split(source, 5, seed=0)


def test_split_is_a_pure_function_of_the_seed():
    from pipeline.config import DataConfig
    from pipeline.data import load_dataset

    source = load_dataset(DataConfig(name="digits", image_size=8))
    a, b, c = (make_split(source, 5, seed) for seed in (0, 0, 1))
    assert a == b and a.class_order != c.class_order
    for t in range(5):
        assert not set(a.train[t]) & set(a.val[t])
        assert sorted(a.task_classes[t]) == sorted(a.class_order[2 * t : 2 * t + 2])


@pytest.mark.server
def test_ui_serves_the_store_on_localhost(tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "ui", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--port", str(port)],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                time.sleep(0.5)
        else:
            pytest.fail("the MLflow UI did not come up")
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        local_addresses = {line.split()[3] for line in listening.splitlines() if line.strip()}
        assert local_addresses == {f"127.0.0.1:{port}"}, listening
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_b5_variant_wraps_the_first_blocks_with_plain_gpm(tmp_path, tiny_checkpoint):
    """InfLoRA-b5 as options: branches in the first blocks only, GPM memory (no complement)."""
    from pipeline.running.state import RunDir
    from safetensors.torch import load_file

    cfg = config_from_dict(
        tiny_config_dict(tmp_path, tiny_checkpoint, method={"blocks": 1, "dual_memory": False, "lamb": 0.999},
                         data={"num_tasks": 2}, tracking={"enabled": False})
    )
    (outcome,) = execute(make_specs(cfg), progress=False)
    run_dir = RunDir(outcome.spec.run_dir)
    adapter = load_file(str(run_dir.session_dir(1) / "adapter.safetensors"))
    assert {k.split(".")[2] for k in adapter if k.startswith("lora.")} == {"0"}  # lora.blocks.<i>...
    memory = load_file(str(run_dir.session_dir(1) / "memory.safetensors"))
    assert set(memory) == {"blocks.0.attn.qkv/basis", "blocks.0.attn.qkv/complement", "blocks.0.attn.qkv/dual"}
    assert int(memory["blocks.0.attn.qkv/dual"]) == 0 and int(memory["blocks.0.attn.qkv/complement"]) == 0
