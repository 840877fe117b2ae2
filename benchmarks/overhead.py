"""Orchestration overhead: the staged Ray + MLflow pipeline vs a bare in-process loop.

Both run the same demo protocol over the same ``model/`` code, as separate
processes (interpreter start and imports included in both):

(a) ``python -m pipeline.cli run CONFIG`` — stages as Ray tasks on a local
    cluster, state written to a run directory, everything logged to MLflow (sqlite);
(b) ``python benchmarks/overhead.py --bare CONFIG`` — one loop over sessions
    calling the method's design / train / memory update / evaluation directly.

The pairs run alternately (a b a b …) and the ratio is taken pair by pair, as
the machine is noisy. The target is a ratio ≤ 1.10 for a workload of ≥ 60 s.

Usage::

    python benchmarks/overhead.py --pairs 3 --epochs 125
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def bare_loop(config_path: str, overrides: list[str]) -> dict:
    """The demo protocol as one plain loop over the method's own steps: no Ray, no MLflow, no run directory.

    The steps run on an in-memory context (:class:`model.methods.memory_context.InMemoryContext`)
    fed by the same loaders as the pipeline's, so the work is the pipeline's minus
    the orchestration: the design, training, memory update and evaluation (test
    and validation of every seen task, the interference probe) of every session.
    """
    import torch

    from model import create_backbone
    from model.methods.memory_context import InMemoryContext
    from pipeline.config import load_config
    from pipeline.data import load_dataset, make_loader, make_split
    from pipeline.running.stages import method_of

    started = time.perf_counter()
    cfg = load_config(config_path, overrides)
    seed = cfg.seeds[0]
    data = cfg.data
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_stage)))
    source = load_dataset(data)
    split = make_split(source, data.num_tasks, seed, data.class_order, data.val_fraction, data.max_train_per_class, data.test_fraction)
    labels = split.label_map()
    b = cfg.backbone
    backbone = create_backbone(b.name, pretrained=b.pretrained, checkpoint=b.checkpoint, overrides=b.overrides)
    method = method_of(cfg)

    def loader(pool, indices, batch_size):
        return make_loader(pool, indices, labels, batch_size)

    class Context(InMemoryContext):
        def train_batches(self, generator):
            indices = [i for t in self.tasks for i in split.train[t]]
            return make_loader(source.train, indices, labels, cfg.train.batch_size, shuffle=generator is not None, generator=generator)

        def eval_batches(self, task, part):
            pool = source.test if part == "test" else source.measure_pool
            return loader(pool, getattr(split, part)[task], cfg.train.eval_batch_size)

        def split_size(self, task, part):
            return len(getattr(split, part)[task])

    ctx = Context(method, backbone, [[] for _ in range(data.num_tasks)], [len(c) for c in split.task_classes], cfg.train, seed=seed)
    rows = [ctx.run(s, step.name) for s in range(ctx.num_sessions) for step in method.session_steps(s)]
    return {"rows": [r.test_row() for r in rows if r.eval is not None], "compute_s": time.perf_counter() - started}


def timed(command: list[str], env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--epochs", type=int, default=125, help="epochs per task (sets the workload length: >= 60 s)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--bare", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        result = bare_loop(args.bare, args.set)
        print(json.dumps(result))
        return

    overrides = [f"train.epochs={args.epochs}"]
    work = Path(tempfile.mkdtemp(prefix="inflora-overhead-"))
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    # make sure the backbone checkpoint exists before timing anything
    subprocess.run([sys.executable, "-m", "pipeline.cli", "pretrain", args.config], env=env, check=True, capture_output=True)
    # one MLflow store for every pair, created before timing: a user's mlflow.db exists
    # after the first run, and creating its tables costs a few seconds once
    db = work / "mlflow.db"
    warm = subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.MlflowClient('sqlite:///{db}').search_experiments()"],
                          env=env, capture_output=True, text=True)
    if warm.returncode != 0:
        raise RuntimeError(warm.stderr[-2000:])
    rows = []
    try:
        for i in range(args.pairs):
            out = work / f"pair{i}"
            pipeline_cmd = [
                sys.executable, "-m", "pipeline.cli", "run", args.config, "--no-progress",
                "--set", f"output_dir={out / 'runs'}",
                "--set", f"tracking.uri=sqlite:///{db}",
                *sum((["--set", o] for o in overrides), []),
            ]
            bare_cmd = [sys.executable, __file__, "--bare", args.config, *sum((["--set", o] for o in overrides), [])]
            a, _ = timed(pipeline_cmd, env)
            b, out_b = timed(bare_cmd, env)
            bare_compute = json.loads(out_b.strip().splitlines()[-1])["compute_s"]
            stage_s = sum(
                json.loads(p.read_text())["wall_time_s"] for p in (out / "runs").rglob("*.done.json")
            )
            rows.append({
                "pair": i, "pipeline_s": a, "bare_s": b, "ratio": a / b,
                "pipeline_stages_s": stage_s, "bare_compute_s": bare_compute,
                "pipeline_fixed_s": a - stage_s, "bare_fixed_s": b - bare_compute,
            })
            print(f"pair {i}: pipeline {a:.1f} s (stages {stage_s:.1f} s), bare {b:.1f} s (compute {bare_compute:.1f} s), "
                  f"ratio {a / b:.3f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import pandas as pd

    table = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS / "overhead.csv", index=False)
    median = statistics.median(table["ratio"])
    lines = [
        f"# Orchestration overhead (demo protocol, {args.epochs} epochs/task, {args.pairs} pairs)",
        "",
        f"Command: `python benchmarks/overhead.py --pairs {args.pairs} --epochs {args.epochs}`",
        "",
        table.round(3).to_markdown(index=False),
        "",
        f"Median ratio pipeline / bare: **{median:.3f}** (target ≤ 1.10; median bare workload {statistics.median(table['bare_s']):.0f} s).",
        "",
        "Where the difference comes from (medians): the stages computed for "
        f"{statistics.median(table['pipeline_stages_s']):.1f} s against the bare loop's "
        f"{statistics.median(table['bare_compute_s']):.1f} s of work (per-stage cost: rebuilding the network from the run "
        "directory, Ray scheduling, writing state); outside the stages the pipeline process spent "
        f"{statistics.median(table['pipeline_fixed_s']):.1f} s (interpreter and imports, starting and stopping the local Ray "
        "cluster, opening and closing the MLflow run, logging its artifacts) against the bare process's "
        f"{statistics.median(table['bare_fixed_s']):.1f} s (interpreter and imports).",
    ]
    (RESULTS / "overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
