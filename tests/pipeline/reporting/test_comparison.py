"""``inflora run --methods`` / several configs: every method on one protocol, as one batch, one table."""

from __future__ import annotations

import json

from conftest import tiny_config_dict

from pipeline.cli import main


def write(tmp_path, name, cfg):
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return path


def test_methods_share_split_and_seeds_and_land_under_one_comparison_run(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    cfg = tiny_config_dict(tmp_path, tiny_checkpoint, data={"num_tasks": 2}, train={"epochs": 1})
    path = write(tmp_path, "run.yaml", cfg)
    assert main(["run", str(path), "--methods", "inflora", "frozen", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "every method on the same split and seeds" in out and "frozen" in out and "forgetting" in out
    splits = {p.parent.name.split("-")[1]: json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/split.json")}
    assert set(splits) == {"inflora", "frozen"} and splits["inflora"] == splits["frozen"]
    client = MlflowClient(tracking_uri=cfg["tracking"]["uri"])
    experiment = client.get_experiment_by_name("tests").experiment_id
    (parent,) = client.search_runs([experiment], "tags.comparison = 'true'")
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["method"] for r in children) == ["frozen", "inflora"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)} | {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"comparison.csv", "runs.csv", "plots/comparison.png"} <= artifacts
    png = tmp_path / "cmp.png"
    assert main(["report", "--tracking-uri", cfg["tracking"]["uri"], "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_configs_of_another_protocol_are_refused_naming_the_key(tmp_path, tiny_checkpoint, capsys):
    a = write(tmp_path, "a.yaml", tiny_config_dict(tmp_path, tiny_checkpoint))
    b = write(tmp_path, "b.yaml", tiny_config_dict(tmp_path, tiny_checkpoint, method={"name": "frozen"}, data={"num_tasks": 2}))
    assert main(["run", str(a), str(b), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not share the protocol" in err and "data.num_tasks" in err
    assert not (tmp_path / "runs").exists()


def test_unknown_method_in_methods_is_one_line(tmp_path, tiny_checkpoint, capsys):
    a = write(tmp_path, "a.yaml", tiny_config_dict(tmp_path, tiny_checkpoint))
    assert main(["run", str(a), "--methods", "inflora", "nope"]) == 2
    assert "--methods: unknown method 'nope'" in capsys.readouterr().err
