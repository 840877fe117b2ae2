"""CPU proxy of the paper's comparison: every registered method on the demo protocol.

The demo protocol (configs/demo.yaml: scikit-learn digits in 5 class-incremental
tasks, a tiny ViT pretrained in this project on MNIST) for each method (each with
its settings from ``method.<name>`` of the config, defaults otherwise) over 3 seeds,
on the same split and class order per seed, all runs submitted at once to a local
Ray cluster and logged to MLflow. Writes a pandas table (mean ± std over seeds,
trainable parameters and wall time per task) to ``benchmarks/results/``.

The check the project holds itself to: InfLoRA beats sequential LoRA on final
accuracy and on forgetting by more than the seed spread (the sum of the two
standard deviations).

Usage::

    python benchmarks/proxy_accuracy.py [--seeds 0 1 2] [--config configs/demo.yaml] [--methods inflora frozen ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COLUMNS = {
    "val_final_acc_task_mean": "val final acc",
    "final_acc_task_mean": "final acc",
    "avg_acc_task_mean": "average acc",
    "final_acc_sample_weighted": "final acc (weighted)",
    "forgetting": "forgetting",
    "bwt": "BWT",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], help="config override for every method")
    parser.add_argument("--methods", nargs="+", default=None, help="methods to compare (default: every registered method)")
    parser.add_argument("--output-dir", default=str(ROOT / "runs" / "proxy"))
    parser.add_argument("--tag", default="proxy_accuracy", help="file name stem under benchmarks/results/")
    args = parser.parse_args()

    from model.methods import available_methods
    from pipeline.config import load_config
    from pipeline.running.runner import execute, make_specs
    from pipeline.tracking.tracker import run_costs

    METHODS = tuple(args.methods or available_methods())
    base = load_config(args.config, [*args.set, f"output_dir={args.output_dir}", "tracking.experiment=inflora-proxy-benchmark"])
    specs = [spec for method in METHODS for spec in make_specs(base.with_method(method), args.seeds)]
    started = time.perf_counter()
    outcomes = execute(specs, progress=True)
    elapsed = time.perf_counter() - started

    rows = [
        {"method": o.spec.config.method.name, "seed": o.spec.seed, **o.summary,
         **{f"val_{k}": v for k, v in o.results().summary("val").items()},
         **run_costs(o.run_dir, o.spec, o.sessions)}
        for o in outcomes
    ]
    runs = pd.DataFrame(rows)
    values = runs[["method", *COLUMNS]].copy()
    values[list(COLUMNS)] *= 100
    mean = values.groupby("method").mean().reindex(METHODS)
    std = values.groupby("method").std(ddof=1).reindex(METHODS)
    table = pd.DataFrame({label: [f"{mean.loc[m, key]:.2f} ± {std.loc[m, key]:.2f}" if pd.notna(mean.loc[m, key]) else "n/a"
                                  for m in METHODS] for key, label in COLUMNS.items()}, index=list(METHODS))
    table["params/task"] = runs.groupby("method")["trainable_params_per_task"].mean().reindex(METHODS).map("{:,.0f}".format)
    table["wall s/task"] = runs.groupby("method")["wall_time_per_task_s"].mean().reindex(METHODS).map("{:.2f}".format)
    table.index.name = "method"

    cfg = specs[0].config
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs.to_csv(RESULTS / f"{args.tag}_runs.csv", index=False)
    table.to_csv(RESULTS / f"{args.tag}.csv")
    overrides = " ".join(f"--set {s}" for s in args.set)
    lines = [
        f"# Proxy accuracy: {cfg.data.name}, {cfg.data.num_tasks} tasks, seeds {args.seeds}",
        "",
        f"Command: `python benchmarks/proxy_accuracy.py --seeds {' '.join(map(str, args.seeds))}"
        f"{' --methods ' + ' '.join(args.methods) if args.methods else ''}"
        f"{' ' + overrides if overrides else ''}` ({elapsed:.0f} s wall for {len(specs)} runs on a local Ray cluster).",
        "",
        f"Backbone: `{cfg.backbone.name}` with {cfg.backbone.overrides}, weights `{Path(cfg.backbone.checkpoint).name}` "
        f"(pretrained here on {cfg.backbone.pretrain.dataset if cfg.backbone.pretrain else 'external data'}).",
        f"LoRA rank {cfg.method.config.rank}; {cfg.train.optimizer} lr {cfg.train.lr}, {cfg.train.epochs} epochs, batch {cfg.train.batch_size} "
        f"for every method; method settings: " + "; ".join(f"{m}: {base.with_method(m).method.config}" for m in METHODS) + ".",
        "",
        "Accuracy in %, mean ± std over seeds. final/average acc: per-task mean (the paper's); weighted: over all test samples; "
        "val final acc: on the validation split carved from the training data (what a choice of settings may look at).",
        "",
        table.to_markdown(),
        "",
    ]
    if {"inflora", "seq_lora"} <= set(METHODS):  # the proxy criterion compares these two
        lines += criterion_lines(values, runs, mean, std)
    (RESULTS / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def criterion_lines(values: pd.DataFrame, runs: pd.DataFrame, mean: pd.DataFrame, std: pd.DataFrame) -> list[str]:
    """InfLoRA against seq_lora: the proxy's pass/fail criterion, over seeds and paired by seed."""
    final_gap = mean.loc["inflora", "final_acc_task_mean"] - mean.loc["seq_lora", "final_acc_task_mean"]
    final_spread = std.loc["inflora", "final_acc_task_mean"] + std.loc["seq_lora", "final_acc_task_mean"]
    forget_gap = mean.loc["seq_lora", "forgetting"] - mean.loc["inflora", "forgetting"]
    forget_spread = std.loc["inflora", "forgetting"] + std.loc["seq_lora", "forgetting"]
    verdict = "MET" if final_gap > final_spread and forget_gap > forget_spread else "MISSED"
    # Paired view: the same seed gives both methods the same class order and split.
    per_seed = values.assign(seed=runs["seed"]).pivot_table(index="seed", columns="method")
    paired_final = per_seed[("final_acc_task_mean", "inflora")] - per_seed[("final_acc_task_mean", "seq_lora")]
    paired_forget = per_seed[("forgetting", "seq_lora")] - per_seed[("forgetting", "inflora")]
    return [
        f"InfLoRA − seq_lora final accuracy: {final_gap:+.2f} (seed spread {final_spread:.2f}); "
        f"forgetting reduction: {forget_gap:+.2f} (spread {forget_spread:.2f}) → criterion **{verdict}** "
        "(gap larger than the sum of the two methods' standard deviations over seeds).",
        "",
        f"Paired by seed (same class order and split for both methods): final accuracy gain "
        f"{paired_final.mean():+.2f} ± {paired_final.std(ddof=1):.2f} (per seed: {', '.join(f'{v:+.1f}' for v in paired_final)}); "
        f"forgetting reduction {paired_forget.mean():+.2f} ± {paired_forget.std(ddof=1):.2f} "
        f"(per seed: {', '.join(f'{v:+.1f}' for v in paired_forget)}).",
    ]


if __name__ == "__main__":
    main()
