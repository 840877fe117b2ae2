"""``inflora sweep``: run, resume or inspect a hyperparameter sweep.

    inflora sweep configs/sweep_demo.yaml             # start (Ray Tune + Optuna + MLflow)
    inflora sweep --resume configs/sweep_demo.yaml    # or the sweep directory: continue a killed sweep
    inflora sweep --best sweeps/demo-sweep            # best configuration, its numbers, a re-run command
    inflora sweep configs/sweep_demo.yaml --smoke-test
    inflora sweep configs/sweep_demo.yaml --dashboard # Optuna's dashboard of the study, on 127.0.0.1:8080

Printing happens here only; the library modules log.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys

from pipeline.tracking import metric_keys as mk

from .dashboard import DEFAULT_PORT

__all__ = ["add_sweep_parser", "cmd_sweep", "print_mlflow_sweep", "print_summary"]

_SMOKE = ["sweep.num_samples=2", "sweep.max_concurrent=2", "train.epochs=1"]


def add_sweep_parser(subparsers) -> None:
    """Register ``inflora sweep`` on the ``inflora`` sub-command parser."""
    p = subparsers.add_parser(
        "sweep",
        help="hyperparameter sweep of a run config (Ray Tune + Optuna, MLflow parent/child runs)",
        description="Search LoRA rank, thresholds, learning rate… on the validation split; "
        "the test split is only reported for the best configuration.",
    )
    p.add_argument("target", help="sweep file (YAML: a run config with a sweep: section), or a sweep directory")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value, e.g. --set sweep.num_samples=20 --set train.epochs=5")
    p.add_argument("--resume", action="store_true", help="continue the sweep in its directory (finished trials are kept)")
    p.add_argument("--best", action="store_true", help="print the best configuration found so far (runs nothing)")
    p.add_argument("--num-samples", type=int, help="override sweep.num_samples")
    p.add_argument("--max-concurrent", type=int, help="override sweep.max_concurrent")
    p.add_argument("--smoke-test", action="store_true", help="2 trials of 1 epoch per task, in <name>-smoke (for CI)")
    p.add_argument("--quiet", action="store_true", help="no Ray Tune progress table")
    p.add_argument("--dashboard", action="store_true", help="serve the sweep's Optuna study with optuna-dashboard on 127.0.0.1 (runs nothing)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port of --dashboard (default {DEFAULT_PORT})")
    p.set_defaults(func=cmd_sweep)


def _extra_overrides(args: argparse.Namespace, sweep) -> list[str]:
    extra = []
    if args.num_samples is not None:
        extra.append(f"sweep.num_samples={args.num_samples}")
    if args.max_concurrent is not None:
        extra.append(f"sweep.max_concurrent={args.max_concurrent}")
    if args.smoke_test:
        space = {n: s for n, s in sweep.config.space.items() if n != "epochs"}
        extra += _SMOKE + [f"sweep.name={sweep.name}-smoke", f"sweep.space={_flow(space)}", "sweep.enqueue=[]"]
    return extra


def cmd_sweep(args: argparse.Namespace) -> int:
    from .config import load_sweep

    overrides = list(args.set or [])
    sweep = load_sweep(args.target, overrides)
    extra = _extra_overrides(args, sweep)
    if extra:
        sweep = load_sweep(args.target, overrides + extra)
    if args.dashboard:
        from .dashboard import serve_dashboard

        print(f"Optuna dashboard of study {sweep.study_name!r} on http://127.0.0.1:{args.port}  (Ctrl-C stops it)", flush=True)
        try:
            serve_dashboard(sweep, port=args.port)
        except ImportError as exc:
            print(f"inflora: error: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.best:
        from .results import summarize_sweep

        print_summary(summarize_sweep(_as_recorded(sweep)))
        return 0
    from .tuner import run_sweep

    print(f"sweep {sweep.name}: {sweep.config.num_samples} trials of {sweep.base.name}, "
          f"{sweep.config.max_concurrent} at a time, seeds {sweep.seeds}; directory {sweep.dir}")
    for name, text in sweep.space.describe().items():
        print(f"  {name:7s} {text}")
    outcome = run_sweep(sweep, resume=args.resume, verbose=0 if args.quiet else 1)
    print_summary(outcome.summary)
    if outcome.parent_run_id:
        from pipeline.tracking.store import browse_hint, resolve_tracking_uri

        uri = resolve_tracking_uri(sweep.base.tracking)
        print(f"\nMLflow: parent run {outcome.parent_run_id} ({sweep.name}) in experiment {sweep.base.tracking.experiment!r}"
              f"\n  {browse_hint(uri)}")
    from .tracking import masked_url

    print(f"Optuna: inflora sweep {shlex.quote(str(args.target))} --dashboard   (or: optuna-dashboard {shlex.quote(masked_url(sweep.storage_url))} --host 127.0.0.1)")
    if not outcome.complete:
        print(f"\nthe sweep did not finish; resume it with: inflora sweep --resume {shlex.quote(str(sweep.dir))}")
        return 1
    return 0


def _as_recorded(sweep):
    """The sweep as it ran (its directory's ``sweep.yaml``): ``--set`` values that change the
    trials' configs (``train.epochs=1``) would point at run directories that do not exist."""
    from pipeline.config import flatten

    from .config import SWEEP_FILE, load_sweep

    if not (sweep.dir / SWEEP_FILE).is_file():
        return sweep
    recorded = load_sweep(sweep.dir)
    ran, asked = flatten(recorded.to_dict()), flatten(sweep.to_dict())
    differ = [k for k in sorted(set(ran) | set(asked)) if ran.get(k) != asked.get(k)]
    if differ:
        shown = ", ".join(f"{k}={ran.get(k)!r}" for k in differ[:6]) + (", …" if len(differ) > 6 else "")
        print(f"note: {sweep.dir} ran with {shown}; reporting the sweep as it ran (its {SWEEP_FILE}), not as asked")
    return recorded


def _flow(mapping) -> str:
    import yaml

    return yaml.safe_dump(mapping, default_flow_style=True, sort_keys=False).strip()


def _pct(value) -> str:
    return "   n/a" if value is None or math.isnan(value) else f"{value * 100:6.2f}"


def print_summary(summary) -> None:
    """Print the best configuration, its validation and test numbers, and the re-run command."""
    import pandas as pd

    table = summary.table
    sweep = summary.sweep
    complete = int((table["status"] == "complete").sum()) if len(table) else 0
    print(f"\nsweep {sweep.name}: {len(table)} trials, {complete} complete ({sweep.dir})")
    if len(table):
        ranked = table.assign(_complete=table["status"] == "complete")
        shown = ranked.sort_values(["_complete", "objective"], ascending=False).head(10).drop(columns="_complete")
        for col in ("objective", "val_acc", "test_avg_acc", "test_final_acc"):
            shown[col] = (shown[col] * 100).round(2)
        shown = shown.drop(columns=["mlflow_run_id"])
        with pd.option_context("display.width", 160, "display.max_columns", 30):
            print("\ntop trials (%; objective = validation average accuracy, the search's metric; "
                  "a stopped trial's covers only its first tasks):")
            print(shown.to_string(index=False))
    best = summary.best
    if best is None:
        print("\nno trial has finished every task yet")
        return
    print(f"\nbest configuration (trial {best['trial_id']}):")
    for name, value in summary.best_params.items():
        print(f"  {name:7s} = {value}")
    seeds = " ".join(map(str, sweep.seeds))
    print(f"  validation (seeds {seeds}): average accuracy {_pct(best['objective'])} %, final {_pct(best['val_acc'])} %   <- selected on this")
    print(f"  test       (seeds {seeds}): average accuracy {_pct(best['test_avg_acc'])} %, final {_pct(best['test_final_acc'])} %   <- reported only")
    print(f"\nre-run it on new seeds:\n  {summary.rerun_command()}")


def print_mlflow_sweep(sweep: str, tracking_uri: str | None = None, experiment: str | None = None) -> int:
    """``inflora report --sweep NAME``: the sweep's best configuration, from MLflow (and its directory)."""
    from .report import find_sweep

    try:
        found = find_sweep(sweep, tracking_uri, experiment)
    except LookupError as exc:
        print(f"inflora: error: {exc}", file=sys.stderr)
        return 1
    print(f"sweep {found.name}: MLflow parent run {found.parent_run_id} ({found.tracking_uri}), {len(found.trials)} trial runs")
    if found.summary is not None:
        print_summary(found.summary)
        return 0
    if len(found.trials):
        print(found.trials.to_string(index=False))
    if "best.params" in found.tags:
        print(f"\nbest configuration: {found.tags['best.params']} (trial {found.tags.get('best.trial_id')})")
        for key in mk.TRIAL_METRICS:
            print(f"  {key:15s} {_pct(found.metrics.get(mk.best(key)))} %")
        print(f"\nre-run it on new seeds:\n  {found.tags.get('best.rerun_command')}")
    else:
        print("\nno best configuration logged yet")
    return 0
