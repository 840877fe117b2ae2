"""Load test: N concurrent runs against one MLflow server on PostgreSQL and one Ray head.

    python benchmarks/load.py --runs 8                       # the full size (8 demo runs)
    python benchmarks/load.py --runs 2 --set data.num_tasks=2 --set train.epochs=1   # a small one

Starts PostgreSQL 15 (``initdb``/``postgres`` on 127.0.0.1, a temporary
directory), an ``mlflow server`` on it, and a Ray head; runs the config once
alone (seed 0), then ``--runs`` drivers at once (seeds 1..N), each its own
``inflora run`` process connected to the head. Then every metric in the server
is counted against the same run directories logged to a fresh sqlite store in
one go: none may be missing or duplicated. Writes ``load.csv`` and ``load.md``.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.services import metric_counts, mlflow_server, postgres, ray_head, replay_to_sqlite  # noqa: E402
from pipeline.config import config_to_dict, load_config  # noqa: E402

EXPERIMENT = "load"


def _run_cmd(config: Path, seed: int, sets: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(config), "--no-progress", "--seeds", str(seed)]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def _start(config: Path, seed: int, sets: list[str], env: dict[str, str], logs: Path) -> tuple[subprocess.Popen, float]:
    log = open(logs / f"seed{seed}.log", "wb")
    proc = subprocess.Popen(_run_cmd(config, seed, sets), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, time.perf_counter()


def count(observed: dict[str, collections.Counter], expected: dict[str, collections.Counter]) -> dict[str, int]:
    """Metric values missing from / duplicated in the server, against the reference store."""
    missing = duplicated = extra = total = 0
    for name, want in expected.items():
        got = observed.get(name, collections.Counter())
        total += sum(want.values())
        missing += sum((want - got).values())
        duplicated += sum(n - 1 for n in got.values() if n > 1)
        extra += sum(1 for k in got if k not in want)
    return {"metric_values": total, "missing": missing, "duplicated": duplicated, "unexpected": extra,
            "runs_in_server": len(observed), "runs_expected": len(expected)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8, help="concurrent runs (seeds 1..N)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the Ray head")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for load.csv / load.md")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="inflora-load-") as tmp_name:
        tmp = Path(tmp_name)
        with postgres() as pg_uri, mlflow_server(pg_uri, tmp / "mlflow") as url, ray_head(args.num_cpus) as ray_env:
            sets = [*args.set, f"output_dir={tmp / 'runs'}", f"tracking.uri={url}", f"tracking.experiment={EXPERIMENT}",
                    "resources.executor=ray"]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(ROOT), **ray_env, "MLFLOW_DISABLE_TELEMETRY": "true",
                   "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}  # fmt: skip
            env.pop("MLFLOW_TRACKING_URI", None)
            logs = tmp / "logs"
            logs.mkdir()
            proc, started = _start(Path(args.config), 0, sets, env, logs)
            rc_alone = proc.wait()
            alone = time.perf_counter() - started
            running = [(seed, *_start(Path(args.config), seed, sets, env, logs)) for seed in range(1, args.runs + 1)]
            walls, codes = [], []
            for seed, proc, started in running:
                codes.append(proc.wait())
                walls.append(time.perf_counter() - started)
            concurrent_total = max(walls)
            failed = [s for (s, _, _), c in zip(running, codes) if c != 0] + ([0] if rc_alone else [])
            for seed in failed:
                print(f"seed {seed} failed:\n" + (logs / f"seed{seed}.log").read_text(errors="replace")[-3000:], file=sys.stderr)
            observed = metric_counts(url, EXPERIMENT)
        config = config_to_dict(load_config(args.config, sets))
        run_dirs = sorted(p for p in (tmp / "runs").iterdir() if (p / "run.json").is_file())
        expected = metric_counts(replay_to_sqlite(run_dirs, config, tmp), EXPERIMENT)
        counts = count(observed, expected)

    row = {"runs": args.runs, "sets": " ".join(args.set), "ray_cpus": args.num_cpus, "one_run_alone_s": round(alone, 1),
           "concurrent_wall_s": round(concurrent_total, 1), "concurrent_per_run_mean_s": round(sum(walls) / len(walls), 1),
           "concurrent_per_run_max_s": round(max(walls), 1), "failed_runs": len(failed), **counts}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([row])
    frame.to_csv(out / "load.csv", index=False)
    (out / "load.md").write_text(
        f"# Load: {args.runs} concurrent runs, one MLflow server on PostgreSQL 15, one Ray head\n\n"
        f"Command: `python benchmarks/load.py --runs {args.runs} {' '.join('--set ' + s for s in args.set)} --num-cpus {args.num_cpus}`\n\n"
        + frame.to_markdown(index=False) + "\n"
    )
    print(frame.T.to_string(header=False))
    ok = not failed and counts["missing"] == counts["duplicated"] == counts["unexpected"] == 0 and counts["runs_in_server"] == args.runs + 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
