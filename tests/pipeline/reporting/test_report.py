"""``inflora report``: groups by config hash, distinct seeds, no sweep trials, figures only on
their protocol, tables that fit a terminal.

The runs are logged to a throw-away sqlite store with the tags and params that
``pipeline.tracking.tracker.Tracker.open_run`` writes, from real configs; no training.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import config_to_dict, flatten, load_config
from pipeline.reporting.report import comparison_figure, runs_table, summary_notes, summary_table

ROOT = Path(__file__).resolve().parents[3]
PAPER = ROOT / "configs" / "paper"


@pytest.fixture()
def store(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("report-test")
    return uri, client, experiment


def _log(store, config: Path, seed: int, final: float, overrides: list[str] | None = None, tags: dict | None = None,
         method: str | None = None) -> None:
    """One finished run as the tracker logs it: tags, the flattened config as params, final metrics;
    ``method`` switches the method as ``inflora run --methods`` does."""
    from mlflow.entities import Metric, Param

    uri, client, experiment = store
    cfg = load_config(config, overrides or [])
    cfg = cfg.with_method(method) if method else cfg
    run = client.create_run(experiment, tags={"seed": str(seed), "method": cfg.method.name, "config_name": cfg.name,
                                              "result_key": cfg.result_key(), **(tags or {})})  # fmt: skip
    params = {**flatten(config_to_dict(cfg)), "seed": seed}
    params.pop("seeds")
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    metrics = {"final/final_acc_task_mean": final, "final/avg_acc_task_mean": final + 0.1, "final/forgetting": 0.05,
               "final/bwt": -0.05, "final/trainable_params_per_task": 2178.0, "final/wall_time_per_task_s": 1.5}  # fmt: skip
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
    client.set_terminated(run.info.run_id, "FINISHED")


DEMO = ROOT / "configs" / "demo.yaml"


def test_runs_of_one_config_name_that_differ_are_not_averaged(store):
    for seed in (0, 1):
        _log(store, DEMO, seed, 0.50 + seed / 100)
    _log(store, DEMO, 0, 0.30, ["train.epochs=2"])
    runs = runs_table(tracking_uri=store[0])
    table = summary_table(runs)
    assert list(table["config"]) == ["demo#1", "demo#2"] and list(table["seeds"]) in ([2, 1], [1, 2])
    by_seeds = table.set_index("seeds")
    assert by_seeds.loc[1, "final"] == "30.00"  # the 2-epoch run alone
    assert by_seeds.loc[2, "final"] == "50.50±0.71"
    notes = "\n".join(summary_notes(runs))
    assert "demo / inflora spans 2 groups" in notes and "train.epochs=2" in notes and "train.epochs=10" in notes


def test_a_seed_logged_twice_counts_once_its_latest_run(store):
    _log(store, DEMO, 0, 0.40)
    _log(store, DEMO, 0, 0.60)  # the same seed re-logged to a new MLflow run
    _log(store, DEMO, 1, 0.60)
    table = summary_table(runs_table(tracking_uri=store[0]))
    assert len(table) == 1 and table["seeds"].iloc[0] == 2
    assert table["final"].iloc[0] == "60.00±0.00"


def test_sweep_trials_stay_out_unless_asked(store, capsys):
    _log(store, DEMO, 0, 0.50)
    _log(store, DEMO, 0, 0.90, ["train.lr=0.01"], tags={"sweep.name": "s1", "sweep.role": "trial"})
    assert len(runs_table(tracking_uri=store[0])) == 1
    assert len(runs_table(tracking_uri=store[0], include_sweeps=True)) == 2
    assert main(["report", "--tracking-uri", store[0]]) == 0
    assert "90.00" not in capsys.readouterr().out
    assert main(["report", "--tracking-uri", store[0], "--include-sweeps"]) == 0
    assert "90.00" in capsys.readouterr().out


def test_a_published_figure_prints_only_beside_runs_of_its_protocol(store):
    _log(store, PAPER / "imagenet_r_10.yaml", 0, 0.75)  # InfLoRA's protocol: its figure
    _log(store, PAPER / "imagenet_r_10.yaml", 0, 0.40, ["train.epochs=2"])  # fewer epochs
    _log(store, PAPER / "imagenet_r_10.yaml", 0, 0.10, ["backbone.pretrained=false"])  # random weights
    _log(store, PAPER / "imagenet_r_10.yaml", 0, 0.60, method="l2p")  # a rival on InfLoRA's optimizer
    _log(store, PAPER / "imagenet_r_10_sd_lora.yaml", 0, 0.70)  # SD-LoRA on InfLoRA's protocol
    _log(store, PAPER / "imagenet_r_10_sd_lora_official.yaml", 0, 0.77)  # SD-LoRA on its own protocol
    runs = runs_table(tracking_uri=store[0])
    table = summary_table(runs).set_index(["method", "final"])["published"]
    assert table[("inflora", "75.00")] == "75.65 / 80.82"
    assert table[("inflora", "40.00")] == table[("inflora", "10.00")] == table[("l2p", "60.00")] == "—"
    assert table[("sd_lora", "70.00")] == "—"
    assert table[("sd_lora", "77.00")] == "77.34 / 82.04"
    notes = summary_notes(runs)
    assert any("75.65" in n and "left out" in n and "train.epochs 2" in n for n in notes)
    assert any("75.65" in n and "left out" in n and "backbone weights random" in n for n in notes)
    assert any("77.34" in n and "left out" in n and "protocol imagenet_r_10_sd_lora_official" in n and "data.class_order" in n
               for n in notes)  # fmt: skip
    _log(store, PAPER / "imagenet_r_10_sd_lora_official.yaml", 1, 0.71, ["data.options.crop_scale=[0.08, 1.0]"])
    crop = [m for m in _matches_of(runs_table(tracking_uri=store[0]), "71.00") if m.figure.final.startswith("77.34")]
    assert crop and not crop[0].matches and crop[0].differs == ("data.options.crop_scale [0.08, 1.0]",)
    assert any("71.26" in n and "left out" in n and "l2p with its own optimizer" in n for n in notes)
    assert any("77.34" in n and "same protocol" in n for n in notes)


def test_ranpac_and_cl_lora_figures_print_beside_their_own_protocols_only(store):
    _log(store, PAPER / "imagenet_r_10_ranpac_official.yaml", 0, 0.78)  # RanPAC's own ImageNet-R protocol
    _log(store, PAPER / "cub_10_ranpac_official.yaml", 0, 0.90)  # RanPAC's own CUB protocol
    _log(store, PAPER / "imagenet_r_10_ranpac.yaml", 0, 0.72)  # RanPAC on InfLoRA's protocol
    _log(store, PAPER / "cub_10_ranpac.yaml", 0, 0.85)  # RanPAC on cub_10's protocol
    _log(store, PAPER / "imagenet_r_40_cl_lora_official.yaml", 0, 0.74)  # CL-LoRA's own protocol
    _log(store, PAPER / "imagenet_r_40_cl_lora_official.yaml", 0, 0.60, ["data.class_order=fixed"])
    runs = runs_table(tracking_uri=store[0])
    table = summary_table(runs).set_index(["method", "final"])["published"]
    assert table[("ranpac", "78.00")] == "77.90 / n/a" and table[("ranpac", "90.00")] == "90.30 / n/a"
    assert table[("ranpac", "72.00")] == table[("ranpac", "85.00")] == "—"
    assert table[("cl_lora", "74.00")] == "74.51 / n/a" and table[("cl_lora", "60.00")] == "—"
    notes = summary_notes(runs)
    for figure, protocol in (("77.9", "imagenet_r_10_ranpac_official"), ("90.3", "cub_10_ranpac_official")):
        assert any(f"{figure} / n/a: left out, it belongs to protocol {protocol}" in n and "data.class_order" in n
                   and "data.options.split_folders" in n for n in notes), notes  # fmt: skip
    assert any("(secondary copy) 74.51" in n and "left out" in n and "data.class_order fixed" in n for n in notes)
    assert any("(secondary copy) 74.51" in n and "same protocol (imagenet_r_40_cl_lora_official)" in n for n in notes)


def _matches_of(runs, final: str):
    """The figure checks of the group whose final accuracy prints as ``final``."""
    from pipeline.reporting.report import _matches

    return [m for _label, _method, rows, found in _matches(runs) if f"{rows['final_acc'].mean():.2f}" == final for m in found]


def test_matching_figures_are_marked_points_on_the_plot(store):
    _log(store, PAPER / "imagenet_r_10.yaml", 0, 0.75)
    _log(store, PAPER / "imagenet_r_10.yaml", 0, 0.40, ["train.epochs=2"])
    fig = comparison_figure(runs_table(tracking_uri=store[0]))
    from matplotlib.collections import PathCollection

    points = [tuple(p) for c in fig.axes[0].collections if isinstance(c, PathCollection) for p in c.get_offsets()]
    assert sorted(round(y, 2) for _, y in points) == [75.65, 80.82]  # one group matches: final and average


def test_the_table_fits_a_terminal(store, capsys):
    for seed in range(5):
        _log(store, PAPER / "imagenet_r_10_coda_prompt.yaml", seed, 0.70 + seed / 100)
    _log(store, PAPER / "imagenet_r_10.yaml", 0, 0.77)  # one seed, beside its published figure
    assert main(["report", "--tracking-uri", store[0]]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100, out
    assert "77.00±0.00" not in out and "77.00" in out  # one seed: the mean alone
    assert "params/task" not in out
    assert main(["report", "--tracking-uri", store[0], "--wide"]) == 0
    assert "params/task" in capsys.readouterr().out


def test_the_older_declaration_form_still_reads():
    """``published = {"<paper config name>": {"paper_final": ..., "paper_average": ...}}``: the name is the protocol."""
    from model.methods.published import PublishedFigure, figures_of
    from pipeline.reporting.report import _cell_of, match_figure, paper_configs

    (figure,) = figures_of({"imagenet_r_10": {"paper_final": "75.65", "paper_average": "80.82"}}, _cell_of)
    assert figure == PublishedFigure("imagenet_r", 10, "75.65", "80.82", "paper", protocol="imagenet_r_10")
    assert match_figure(paper_configs()["imagenet_r_10"], figure, "inflora").matches
    variant = match_figure(paper_configs()["imagenet_r_10_b5"], figure, "inflora")  # InfLoRA-b5: its own figure
    assert not variant.matches and "method.inflora.dual_memory False" in variant.differs
