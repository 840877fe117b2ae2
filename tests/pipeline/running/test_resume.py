"""A run killed in any stage resumes from its last finished stage with the same result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest
from conftest import tiny_config_dict

from pipeline.config import config_from_dict
from pipeline.running.runner import execute, make_specs
from pipeline.running.state import RunDir

DRIVER = Path(__file__).with_name("crash_driver.py")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_checkpoint):
    """The uninterrupted run's accuracy matrices."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = config_from_dict(tiny_config_dict(tmp, tiny_checkpoint, tracking={"enabled": False}))
    (outcome,) = execute(make_specs(cfg), progress=False)
    results = outcome.results()
    assert results.sessions_done == 3
    return results


def kill_and_resume(tmp_path: Path, checkpoint: Path, stage: str, when: str):
    cfg_dict = tiny_config_dict(tmp_path, checkpoint)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg_dict))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(DRIVER), str(path), stage, when], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, f"the driver was not killed:\n{proc.stdout}\n{proc.stderr}"
    cfg = config_from_dict(cfg_dict)
    (spec,) = make_specs(cfg)
    run_dir = RunDir(spec.run_dir)
    killed_in = stage
    assert not run_dir.file(f"{killed_in}.done.json").exists(), "the kill came after the stage finished"
    (outcome,) = execute([spec], progress=False)
    return outcome, run_dir


def kill_then_run(tmp_path: Path, cfg_dict: dict, stage: str, when: str):
    """SIGKILL the crash driver at ``stage``/``when`` of ``cfg_dict``'s run, then run it to the end in-process."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg_dict))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(DRIVER), str(path), stage, when], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    (outcome,) = execute(make_specs(config_from_dict(cfg_dict)), progress=False)
    return outcome


CASES = [
    ("split", "end"),
    ("session_001/design", "start"),
    ("session_001/design", "end"),
    ("session_001/train", "start"),
    ("session_001/train", "epoch"),
    ("session_001/train", "end"),
    ("session_001/update", "end"),
    ("session_001/eval", "end"),
]


@pytest.mark.slow
@pytest.mark.parametrize("stage, when", CASES, ids=[f"{s.split('/')[-1]}-{w}" for s, w in CASES])
def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_checkpoint, reference, stage, when):
    outcome, run_dir = kill_and_resume(tmp_path, tiny_checkpoint, stage, when)
    results = outcome.results()
    np.testing.assert_array_equal(results.test.to_numpy(), reference.test.to_numpy())
    np.testing.assert_array_equal(results.val.to_numpy(), reference.val.to_numpy())
    assert outcome.status == "FINISHED"
    assert not list(run_dir.path.rglob("train_checkpoint.pt*")), "epoch checkpoints are removed once the session is trained"
    if when == "epoch":
        events = [json.loads(line) for line in run_dir.file("events.jsonl").read_text().splitlines()]
        starts = [e for e in events if e["stage"] == stage and e["event"] == "start"]
        assert len(starts) == 2  # killed once, resumed once


def test_resumed_run_reopens_its_mlflow_run_and_logs_each_stage_once(tmp_path, tiny_checkpoint):
    from mlflow import MlflowClient

    outcome, run_dir = kill_and_resume(tmp_path, tiny_checkpoint, "session_001/train", "end")
    tracking = run_dir.read_json("tracking.json")
    assert tracking["run_id"] == outcome.run_id
    client = MlflowClient(tracking_uri=tracking["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(outcome.run_id, "acc/test/task_000")
    assert sorted(m.step for m in history) == [0, 1, 2]
    epochs = client.get_metric_history(outcome.run_id, "train/loss")
    assert sorted(m.step for m in epochs) == list(range(9))  # 3 sessions x 3 epochs, once each


@pytest.mark.slow
def test_inflora_ca_killed_in_align_resumes(tmp_path, tiny_checkpoint):
    method = {"name": "inflora_ca", "ca_epochs": 2, "ca_samples_per_class": 16}
    ref_cfg = config_from_dict(tiny_config_dict(tmp_path / "ref", tiny_checkpoint, method=method, tracking={"enabled": False}))
    (reference,) = execute(make_specs(ref_cfg), progress=False)
    cfg_dict = tiny_config_dict(tmp_path, tiny_checkpoint, method=method)
    outcome = kill_then_run(tmp_path, cfg_dict, "session_001/align", "end")
    run_dir = RunDir(outcome.spec.run_dir)
    assert (run_dir.session_dir(2) / "aligned_heads.safetensors").is_file()
    np.testing.assert_array_equal(outcome.results().test.to_numpy(), reference.results().test.to_numpy())


@pytest.mark.slow
def test_sd_lora_killed_mid_epoch_resumes_with_the_same_magnitudes(tmp_path, tiny_checkpoint):
    method = {"name": "sd_lora"}
    train = {"optimizer": "sgd", "scheduler": "constant", "lr": 1e-2, "epochs": 3}
    ref_cfg = config_from_dict(tiny_config_dict(tmp_path / "ref", tiny_checkpoint, method=method, train=train, tracking={"enabled": False}))
    (reference,) = execute(make_specs(ref_cfg), progress=False)
    cfg_dict = tiny_config_dict(tmp_path, tiny_checkpoint, method=method, train=train, tracking={"enabled": False})
    outcome = kill_then_run(tmp_path, cfg_dict, "session_001/train", "epoch")
    for s in range(3):  # every session's branch and magnitudes, bit for bit
        got = RunDir(outcome.spec.run_dir).load_tensors(f"session_{s:03d}/adapter.safetensors")
        want = RunDir(reference.spec.run_dir).load_tensors(f"session_{s:03d}/adapter.safetensors")
        assert got.keys() == want.keys() and any(k.startswith("magnitude.") for k in got)
        for key in got:
            assert torch.equal(got[key], want[key]), key
    np.testing.assert_array_equal(outcome.results().test.to_numpy(), reference.results().test.to_numpy())


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    [
        {"name": "lora_minus", "lora_minus": {"rank": 2}},  # Adam steps projected into the drift-resistant space, prototypes
        {"name": "cl_lora", "cl_lora": {"rank": 2, "shared_blocks": [0], "specific_blocks": [1]}},  # two SGD steps per batch
    ],
    ids=["lora_minus", "cl_lora"],
)
def test_prototype_methods_killed_mid_epoch_resume_bit_identically(tmp_path, tiny_checkpoint, method):
    train = {"epochs": 3}
    ref_cfg = config_from_dict(tiny_config_dict(tmp_path / "ref", tiny_checkpoint, method=method, train=train, tracking={"enabled": False}))
    (reference,) = execute(make_specs(ref_cfg), progress=False)
    cfg_dict = tiny_config_dict(tmp_path, tiny_checkpoint, method=method, train=train, tracking={"enabled": False})
    outcome = kill_then_run(tmp_path, cfg_dict, "session_001/train", "epoch")
    for s in range(3):  # every session's adapters and prototypes, bit for bit
        for slot in ("adapter", "prototypes"):
            got = RunDir(outcome.spec.run_dir).load_tensors(f"session_{s:03d}/{slot}.safetensors")
            want = RunDir(reference.spec.run_dir).load_tensors(f"session_{s:03d}/{slot}.safetensors")
            assert got.keys() == want.keys() and got
            for key in got:
                assert torch.equal(got[key], want[key]), key
    np.testing.assert_array_equal(outcome.results().test.to_numpy(), reference.results().test.to_numpy())


@pytest.mark.slow
def test_ranpac_killed_mid_epoch_of_its_first_session_resumes_bit_identically(tmp_path, tiny_checkpoint):
    method = {"name": "ranpac", "ranpac": {"projection_dim": 64, "rank": 2}}
    train = {"optimizer": "sgd", "lr": 1e-2, "epochs": 3}
    ref_cfg = config_from_dict(tiny_config_dict(tmp_path / "ref", tiny_checkpoint, method=method, train=train, tracking={"enabled": False}))
    (reference,) = execute(make_specs(ref_cfg), progress=False)
    cfg_dict = tiny_config_dict(tmp_path, tiny_checkpoint, method=method, train=train, tracking={"enabled": False})
    outcome = kill_then_run(tmp_path, cfg_dict, "session_000/train", "epoch")
    got_dir, want_dir = RunDir(outcome.spec.run_dir), RunDir(reference.spec.run_dir)
    assert not (got_dir.session_dir(1) / "adapter.safetensors").exists()  # later sessions train nothing
    for relative in ["session_000/adapter.safetensors", "session_000/projection.safetensors"] + [
        f"session_{s:03d}/{slot}.safetensors" for s in range(3) for slot in ("stats", "classifier")
    ]:
        got, want = got_dir.load_tensors(relative), want_dir.load_tensors(relative)
        assert got.keys() == want.keys(), relative
        for key in got:
            assert torch.equal(got[key], want[key]), f"{relative}: {key}"
    np.testing.assert_array_equal(outcome.results().test.to_numpy(), reference.results().test.to_numpy())


def _photo_folder(root: Path, classes: int = 6, per_class: int = 8) -> Path:
    """Class folders of small JPEGs of varied sizes (so that random resized crops differ per image)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.integers(10, 24, size=2)
            Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(root / f"class_{c}" / f"{i}.jpg")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["pil", "device"])
def test_image_run_killed_mid_epoch_resumes_bit_identically(tmp_path, tiny_checkpoint, pipeline):
    """Random crops and flips on both data paths: the resumed run's adapters equal the uninterrupted run's, bit for bit."""
    root = _photo_folder(tmp_path / "images")

    def cfg_dict(where: Path, workers: int) -> dict:
        data = {"name": "image_folder", "root": str(root), "num_tasks": 3, "image_size": 8, "options": {"channels": 1},
                "pipeline": pipeline, "cache_dir": str(tmp_path / "cache"), "num_workers": workers}
        return tiny_config_dict(where, tiny_checkpoint, data=data, train={"batch_size": 8}, tracking={"enabled": False})

    # the device path's crops do not depend on the worker count (the PIL path's do: workers draw from their own seeds)
    (reference,) = execute(make_specs(config_from_dict(cfg_dict(tmp_path / "ref", 2 if pipeline == "device" else 0))), progress=False)
    outcome = kill_then_run(tmp_path, cfg_dict(tmp_path, 0), "session_001/train", "epoch")
    for s in range(3):
        got = RunDir(outcome.spec.run_dir).load_tensors(f"session_{s:03d}/adapter.safetensors")
        want = RunDir(reference.spec.run_dir).load_tensors(f"session_{s:03d}/adapter.safetensors")
        for key in got:
            assert torch.equal(got[key], want[key]), key
    np.testing.assert_array_equal(outcome.results().test.to_numpy(), reference.results().test.to_numpy())
