"""A resource request no node can meet is refused before anything is submitted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import tiny_config_dict

from pipeline.config import ResourcesConfig, config_from_dict
from pipeline.running.resources import ResourceError, check_cluster_fits, unmet_request
from pipeline.running.runner import execute, make_specs

TWO_NODES = [{"CPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}]


def test_a_request_fits_when_one_node_has_all_of_it():
    assert unmet_request({"CPU": 8.0, "GPU": 0.5}, TWO_NODES) is None
    assert unmet_request({"CPU": 2.0}, TWO_NODES) is None


def test_the_message_names_the_key_the_request_and_the_cluster():
    reason = unmet_request({"CPU": 1.0, "GPU": 2.0}, TWO_NODES)
    assert reason.startswith("resources.gpus_per_stage=2: ")
    assert "asking for 1 CPU, 2 GPU" in reason and "the cluster has 10 CPU, 1 GPU in 2 node(s): 2 CPU, 0 GPU; 8 CPU, 1 GPU" in reason
    assert unmet_request({"CPU": 16.0}, TWO_NODES).startswith("resources.cpus_per_stage=16: ")
    # each part fits some node, but no node has both: both keys are named
    both = unmet_request({"CPU": 4.0, "GPU": 1.0}, [{"CPU": 4.0}, {"CPU": 2.0, "GPU": 1.0}])
    assert both.startswith("resources.cpus_per_stage=4 and resources.gpus_per_stage=1: ")


def test_waits_for_a_node_then_gives_up_or_goes_on():
    looks = []

    def growing():
        looks.append(time.monotonic())
        return [{"CPU": 2.0}] if len(looks) < 3 else [{"CPU": 2.0}, {"CPU": 2.0, "GPU": 1.0}]

    check_cluster_fits([ResourcesConfig(gpus_per_stage=1)], wait_s=5, nodes=growing, poll_s=0.01)
    assert len(looks) == 3
    started = time.monotonic()
    with pytest.raises(ResourceError, match=r"gpus_per_stage=1: .* after waiting 0.2 s"):
        check_cluster_fits([ResourcesConfig(gpus_per_stage=1)], wait_s=0.2, nodes=lambda: [{"CPU": 2.0}], poll_s=0.05)
    assert time.monotonic() - started < 2


def test_negative_wait_is_a_config_error():
    from pipeline.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="resources.wait_for_resources_s must be >= 0"):
        config_from_dict({"resources": {"wait_for_resources_s": -1}})


@pytest.mark.ray
@pytest.mark.parametrize("resources, key", [({"gpus_per_stage": 1}, "gpus_per_stage=1"), ({"cpus_per_stage": 4}, "cpus_per_stage=4")])
def test_impossible_request_on_a_real_cluster_is_refused_in_seconds(tmp_path, tiny_checkpoint, resources, key):
    import ray

    from mlflow import MlflowClient

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = config_from_dict(tiny_config_dict(tmp_path, tiny_checkpoint, resources={"executor": "ray", **resources}))
        started = time.monotonic()
        with pytest.raises(ResourceError, match=key + r": no node .*\(the cluster has 2 CPU, 0 GPU in 1 node"):
            execute(make_specs(cfg), progress=False)
        assert time.monotonic() - started < 30
    finally:
        ray.shutdown()
    (spec,) = make_specs(cfg)
    assert not Path(spec.run_dir).exists()  # refused: no run.json, no .lock, no empty folders
    assert not (tmp_path / "runs").exists()
    if (tmp_path / "mlflow.db").exists():  # no MLflow run was opened (let alone left RUNNING)
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
