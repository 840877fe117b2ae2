"""The backbone is a function of the config: a random one is seeded, hashed into run.json,
checked by every stage, and a killed run resumes bit-identical."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, tiny_config_dict

from model.backbone import create_backbone, weights_sha256
from pipeline.running import backbone_check, stages
from pipeline.running.backbone_check import backbone_sha256
from pipeline.config import config_from_dict
from pipeline.running.runner import execute, make_specs
from pipeline.running.state import RunDir, RunStateError

DRIVER = Path(__file__).with_name("crash_driver.py")


def test_weights_sha256_is_sha256_of_names_dtypes_shapes_and_bytes():
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
        layer.bias.fill_(0.5)
    expected = hashlib.sha256()
    for key, values in (("bias", [0.5]), ("weight", [1.0, 2.0])):
        shape = (1,) if key == "bias" else (1, 2)
        expected.update(f"{key}|torch.float32|{shape}|".encode())
        expected.update(torch.tensor(values, dtype=torch.float32).numpy().tobytes())
    assert weights_sha256(layer) == expected.hexdigest()


def test_random_backbone_depends_on_its_seed_only():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = weights_sha256(create_backbone("vit_tiny_patch16_224", overrides=TINY_OVERRIDES, init_seed=0))
    assert torch.equal(torch.get_rng_state(), state), "the global generator was consumed"
    torch.rand(7)  # another global state
    assert weights_sha256(create_backbone("vit_tiny_patch16_224", overrides=TINY_OVERRIDES, init_seed=0)) == a
    assert weights_sha256(create_backbone("vit_tiny_patch16_224", overrides=TINY_OVERRIDES, init_seed=1)) != a


def _random_backbone_config(tmp_path: Path) -> dict:
    cfg = tiny_config_dict(tmp_path, Path("unused"), tracking={"enabled": False})
    cfg["backbone"] = {**cfg["backbone"], "checkpoint": None, "pretrained": False}
    return cfg


def _results(run_dir: RunDir) -> dict:
    evals = {s: stages.read_result(run_dir, stages.StageKey(s, "eval")) for s in range(3)}
    adapters = {s: (run_dir.session_dir(s) / "adapter.safetensors").read_bytes() for s in range(3)}
    return {"evals": {s: (e.test_row(), e.val_row()) for s, e in evals.items()}, "adapters": adapters}


def test_killed_run_with_a_random_backbone_resumes_bit_identical(tmp_path):
    reference_cfg = config_from_dict(_random_backbone_config(tmp_path / "reference"))
    (reference,) = execute(make_specs(reference_cfg), progress=False)
    record = reference.run_dir.read_json("run.json")
    assert record["backbone_sha256"] == backbone_sha256(reference_cfg.backbone)

    cfg_dict = _random_backbone_config(tmp_path / "killed")
    path = tmp_path / "killed.json"
    path.write_text(json.dumps(cfg_dict))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(DRIVER), str(path), "session_002/design", "start"], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    backbone_check.cached_backbone.cache_clear()  # as in a fresh process: the backbone is built by a session-2 stage first
    (resumed,) = execute(make_specs(config_from_dict(cfg_dict)), progress=False)
    assert _results(resumed.run_dir) == _results(reference.run_dir)


def test_every_stage_checks_the_recorded_backbone(tmp_path):
    cfg = config_from_dict(_random_backbone_config(tmp_path))
    (outcome,) = execute(make_specs(cfg), progress=False)
    run_dir = outcome.run_dir
    record = run_dir.read_json("run.json")
    run_dir.write_json("run.json", {**record, "backbone_sha256": "0" * 64})  # as if the weights had changed
    run_dir.marker(stages.StageKey(2, "eval")).unlink()
    backbone_check.cached_backbone.cache_clear()
    with pytest.raises(Exception, match="has SHA-256 [0-9a-f]{16}…, not the 0000000000000000… this run started with"):
        stages.run_stage(outcome.spec, stages.StageKey(2, "eval"))
    with pytest.raises(RunStateError, match="has SHA-256"):  # and the driver refuses to resume before any stage
        execute([outcome.spec], progress=False)
