"""``inflora`` command line: run, eval, report, ui, pretrain (and sweep).

Printing happens here only; the library modules log.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

from sweeps.cli import add_sweep_parser, print_mlflow_sweep

from .tracking.store import browse_hint, resolve_tracking_uri

__all__ = ["main"]


def _print_table(title: str, frame) -> None:
    import pandas as pd

    with pd.option_context("display.max_columns", 50, "display.width", 160, "display.precision", 2):
        print(f"\n{title}\n{frame.to_string()}")


NOTE_WIDTH = 100
"""Report notes wrap at this width, which the default table fits."""


def _print_summary(title: str, frame, notes: list[str]) -> None:
    """A report table without its index, then its notes (published figures, differing groups), wrapped."""
    import textwrap

    print(f"\n{title}\n{frame.to_string(index=False)}")
    for note in notes:
        print(textwrap.fill(note, NOTE_WIDTH, subsequent_indent="      "))


def _say(line: str) -> None:
    """What the runs do before their stages (a backbone built or reused, stages skipped): shown
    also with ``--no-progress``."""
    print(line, flush=True)


def _percent(frame):
    return (frame * 100).round(2)


def ui_url(host: str, port: int, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """The UI's address in its "Model training" view: MLflow 3.17's UI starts in its GenAI
    view unless the link says ``workflowType`` (or the browser's switch was flipped); the
    ``mlflow.experimentKind`` tag is not read for this. A run's address opens its "Model
    metrics" tab, where the final accuracy matrix is; the tabs keep ``workflowType``."""
    page = f"experiments/{experiment_id}/runs" if experiment_id else "experiments"
    if experiment_id and run_id:
        page += f"/{run_id}/model-metrics"
    return f"http://{host}:{port}/#/{page}?workflowType=machine_learning"


def _experiments(uri: str) -> list[tuple[str, str, str]]:
    """(name, id, newest run's id) of the store's experiments that hold runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = ((e, client.search_runs([e.experiment_id], max_results=1, order_by=["attributes.start_time DESC"])) for e in client.search_experiments())
    return [(e.name, e.experiment_id, runs[0].info.run_id) for e, runs in found if runs]


def _print_outcomes(outcomes, tracking_uri: str | None) -> None:
    import pandas as pd

    rows = []
    for o in outcomes:
        results = o.results()
        if o.status == "FINISHED":
            _print_table(f"{o.spec.label}: test accuracy (%) R[after session, task]", _percent(results.test))
        rows.append({"run": o.spec.label, "status": o.status, **o.summary})
    if rows:
        table = pd.DataFrame(rows).set_index("run")
        numeric = table.select_dtypes("number") * 100
        table[numeric.columns] = numeric.round(2)
        _print_table("summary (%): final/average accuracy (task mean = paper, sample weighted = reference log), forgetting, BWT", table)
    print("\nrun directories:")
    for o in outcomes:
        print(f"  {o.run_dir.path}")
    if tracking_uri:
        print(f"\nMLflow: {tracking_uri}\n  {browse_hint(tracking_uri)}")


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config

    configs = []
    if not args.resume:
        if not args.config:
            raise SystemExit("inflora run: give a CONFIG file or --resume RUN_DIR")
        overrides = list(args.set or [])
        if args.executor:
            overrides.append(f"resources.executor={args.executor}")
        # first, before torch, timm, Ray and MLflow are imported: a bad config is answered in about a second
        configs = [load_config(path, overrides) for path in args.config]
        if args.methods:
            if len(configs) > 1:
                raise SystemExit("inflora run: give either several CONFIG files or --methods, not both")
            configs = [_with_method(configs[0], name) for name in args.methods]
        if len(configs) > 1:
            _check_same_protocol(configs, args.config if not args.methods else [f"--methods {m}" for m in args.methods])
    from .running.preflight import check_resume, preflight
    from .running.runner import execute, make_specs, spec_from_run_dir

    if args.resume:
        specs = [spec_from_run_dir(path) for path in args.resume]
        for spec in specs if args.config or args.set else []:  # the config asked for must be the run's own
            check_resume([spec], _requested_config(args, spec))
    elif len(configs) > 1:
        specs = [spec for c in configs for spec in make_specs(c, args.seeds)]
        preflight(specs)
        return _run_comparison(configs[0], specs, args)
    else:
        specs = make_specs(configs[0], args.seeds)
    preflight(specs)  # before any run directory or MLflow run exists
    outcomes = execute(specs, progress=not args.no_progress, notify=_say)
    cfg = specs[0].config
    _print_outcomes(outcomes, resolve_tracking_uri(cfg.tracking) if cfg.tracking.enabled else None)
    return _exit_code(outcomes)


def _exit_code(outcomes) -> int:
    """3 when the tracking server stayed down until the end (the runs wait to be logged), else 0."""
    from .tracking.offline import backlog_message

    waiting = backlog_message(outcomes)
    if waiting:
        print(f"inflora: error: {waiting}", file=sys.stderr)
        return 3
    return 0


def _requested_config(args: argparse.Namespace, spec):
    from .config import apply_overrides, config_from_dict, config_to_dict, load_config

    if args.config:
        return load_config(args.config[0], list(args.set or []))
    return config_from_dict(apply_overrides(config_to_dict(spec.config), list(args.set or [])))


def _with_method(cfg, name: str):
    from model.methods import available_methods

    from .config import ConfigError

    if name not in available_methods():
        raise ConfigError(f"--methods: unknown method {name!r}; known methods: {available_methods()}")
    return cfg.with_method(name)


def _check_same_protocol(configs, sources: list[str]) -> None:
    """A comparison needs one protocol: the same config name, data (split, class order) and seeds."""
    from .config import ConfigError, config_to_dict, flatten

    first = configs[0]
    for other, source in zip(configs[1:], sources[1:]):
        for section in ("name", "seeds", "data"):
            a, b = config_to_dict(first)[section], config_to_dict(other)[section]
            if a != b:
                keys = sorted(k for k in set(flatten({section: a})) | set(flatten({section: b}))
                              if flatten({section: a}).get(k) != flatten({section: b}).get(k)) if isinstance(a, dict) else [section]
                raise ConfigError(
                    f"{source} does not share the protocol of {sources[0]}: {', '.join(keys)} differ "
                    "(a comparison runs every method on the same data, split, class order and seeds)"
                )


def _run_comparison(cfg, specs, args: argparse.Namespace) -> int:
    """Every method on the same split, class order and seeds, as one batch, nested under one MLflow run."""
    from .reporting.report import runs_table, summary_notes, summary_table
    from .running.runner import execute
    from .tracking.offline import GuardedTracker

    parent = None
    tracker = None
    if cfg.tracking.enabled:  # the same guarded path as single runs: an outage never stops them
        tracker = GuardedTracker(cfg.tracking)
        parent = tracker.open_comparison(cfg, [s.config.method.name for s in specs], sorted({s.seed for s in specs}))
    outcomes = execute(specs, progress=not args.no_progress, parent_run_id=parent, notify=_say, tracker=tracker)
    _print_outcomes(outcomes, resolve_tracking_uri(cfg.tracking) if cfg.tracking.enabled else None)
    if tracker is not None and parent is not None and tracker.online:
        # by run id, not by parent: a run finished before (its directory reused) keeps its own MLflow run
        run_ids = {state["run_id"] for state in (o.run_dir.read_tracking() for o in outcomes) if state is not None}
        table = runs_table(cfg.tracking.experiment, tracking_uri=tracker.uri)
        table = table[table["run_id"].isin(run_ids)] if not table.empty else table
        summary = summary_table(table)
        _print_summary(f"{cfg.name}: every method on the same split and seeds (%)", summary, summary_notes(table))
        tracker.finish_comparison(parent, table, summary)
    return _exit_code(outcomes)


def cmd_eval(args: argparse.Namespace) -> int:
    from .reporting.results import collect_results
    from .running.runner import spec_from_run_dir, verify_run_dir
    from .running.stages import method_of
    from .running.state import RunDir

    for path in args.run_dirs:
        spec = spec_from_run_dir(path)
        method = method_of(spec.config)
        verify_run_dir(RunDir(path), method, spec.config.data.num_tasks)
        results = collect_results(RunDir(path), method.sessions(spec.config.data.num_tasks))
        matrix = results.test if args.split == "test" else results.val
        if matrix.empty:
            print(f"{path}: no session evaluated yet")
            continue
        _print_table(f"{spec.label}: {args.split} accuracy (%) R[after session, task]", _percent(matrix))
        summary = results.summary(args.split)
        for key, value in summary.items():
            print(f"  {key:28s} {value * 100:7.2f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.sweep:
        return print_mlflow_sweep(args.sweep, tracking_uri=args.tracking_uri, experiment=args.experiment)
    from .reporting.report import runs_table, summary_notes, summary_table

    table = runs_table(args.experiment, tracking_uri=args.tracking_uri, include_sweeps=args.include_sweeps)
    if table.empty:
        print("no finished runs found" + ("" if args.include_sweeps else " (sweep trials are left out: --include-sweeps)"))
        return 1
    if args.runs:
        columns = ["config", "method", "seed", "group", "final_acc", "avg_acc", "forgetting", "run_id"]
        _print_summary("runs (%)", table[columns].round(2), [])
    title = "accuracy (%), mean ± std over distinct seeds"
    if args.wide:
        title += "; per task: trainable parameters, wall seconds; the largest stage's peak RSS (MB)"
    summary = summary_table(table, paper=not args.no_paper, wide=args.wide)
    _print_summary(title, summary, summary_notes(table, paper=not args.no_paper))
    if args.csv:
        table.drop(columns="params").to_csv(args.csv, index=False)
        print(f"\nwrote {args.csv}")
    if args.plot:
        from .reporting.plots import close
        from .reporting.report import comparison_figure

        fig = comparison_figure(table)
        fig.savefig(args.plot, dpi=120)
        close(fig)
        print(f"wrote {args.plot}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    uri = args.tracking_uri or resolve_tracking_uri()
    if uri.startswith("http"):
        print(f"the tracking URI is a server already: open {uri}")
        return 0
    # the mlflow of this interpreter, whether or not its bin/ is on PATH
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    # the server's job runner (GenAI scorers) spawns a pool of ~245 MB consumers this pipeline never uses
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    print(f"MLflow UI: open {ui_url(args.host, args.port)}  ({' '.join(shlex.quote(c) for c in cmd)})")
    # MLflow 3's UI keeps a GenAI / Model training switch in the browser (GenAI at first):
    # these links open each experiment's runs in the Model training view
    for name, experiment_id, run_id in _experiments(uri):
        print(f"  {name}: {ui_url(args.host, args.port, experiment_id)}")
        print(f"    newest run: {ui_url(args.host, args.port, experiment_id, run_id)}")
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import load_config
    from .running.pretrain import pretrain_backbone

    cfg = load_config(args.config, args.set)
    if cfg.backbone.checkpoint and Path(cfg.backbone.checkpoint).is_file() and not args.force:
        print(f"{cfg.backbone.checkpoint} exists (use --force to pretrain again)")
        return 0
    report = pretrain_backbone(cfg.backbone, cfg.data)
    print(f"wrote {cfg.backbone.checkpoint}: test accuracy {report['test_accuracy']:.4f} on {report['pretrain_dataset']}"
          f" after {report['recipe']['epochs']} epochs ({report['wall_time_s']:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inflora", description="InfLoRA continual-learning pipeline (Ray + MLflow + Optuna)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) a config's runs: one per seed")
    run.add_argument("config", nargs="*", help="YAML run config; several (one per method, same name, data and seeds) run as one comparison")
    run.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the config's)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. --set train.lr=1e-3")
    run.add_argument("--resume", nargs="+", metavar="RUN_DIR", help="resume existing run directories")
    run.add_argument("--executor", choices=["ray", "local"], help="override resources.executor")
    run.add_argument("--methods", nargs="+", metavar="METHOD",
                     help="run each method (its settings from method.<name>) on the same split, class order and seeds, as one batch")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser("eval", help="print a run directory's accuracy matrix and metrics")
    ev.add_argument("run_dirs", nargs="+")
    ev.add_argument("--split", choices=["test", "val"], default="test")
    ev.set_defaults(func=cmd_eval)

    rep = sub.add_parser("report", help="table of finished runs from MLflow, one row per config hash (mean ± std over seeds)")
    rep.add_argument("--experiment", default=None, help="MLflow experiment name (default: every experiment)")
    rep.add_argument("--tracking-uri", default=None)
    rep.add_argument("--sweep", default=None, help="a sweep's best configuration, its validation and test numbers, a re-run command (parent run name or id)")
    rep.add_argument("--runs", action="store_true", help="also list every run")
    rep.add_argument("--no-paper", action="store_true", help="hide the paper's figures")
    rep.add_argument("--wide", action="store_true", help="every column: weighted, validation, task-IL, task-id, old/new tasks, BWT, costs")
    rep.add_argument("--include-sweeps", action="store_true", help="also the sweep trials' runs (left out by default)")
    rep.add_argument("--csv", default=None, help="write the per-run table (every metric) to this CSV")
    rep.add_argument("--plot", default=None, metavar="PNG", help="write the comparison as a bar chart")
    rep.set_defaults(func=cmd_report)

    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1")
    ui.add_argument("--tracking-uri", default=None)
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)

    pre = sub.add_parser("pretrain", help="pretrain a config's CPU-scale backbone (backbone.pretrain)")
    pre.add_argument("config")
    pre.add_argument("--set", action="append", metavar="KEY=VALUE")
    pre.add_argument("--force", action="store_true")
    pre.set_defaults(func=cmd_pretrain)

    add_sweep_parser(sub)
    return parser


_USER_ERRORS = (
    ("pipeline.config", "ConfigError"),
    ("model.backbone", "BackboneError"),
    ("pipeline.data.base", "DatasetError"),
    ("model.subspace", "SubspaceError"),
    ("pipeline.running.state", "RunStateError"),
    ("pipeline.running.runner", "RunFailed"),
    ("pipeline.running.resources", "ResourceError"),
    ("pipeline.tracking.offline", "TrackingUnavailable"),
)
"""Errors of a bad input or a failed run, printed as one line: (module, class)."""


def _is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one line for the user, not a traceback. A class of :data:`_USER_ERRORS` is
    looked up only if its module is imported (none of its instances can exist otherwise), so that a
    bad config is answered before torch, timm, Ray and MLflow are imported."""
    if isinstance(exc, (FileNotFoundError, LookupError, ConnectionError)):  # ConnectionError: the Ray cluster (RAY_ADDRESS)
        return True
    return any(isinstance(exc, getattr(sys.modules[module], name)) for module, name in _USER_ERRORS if module in sys.modules)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    previous = _on_sigterm(_interrupt)  # a killed command ends its MLflow runs as KILLED, as Ctrl-C does
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("inflora: interrupted; finished stages are kept: re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        print(f"inflora: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _on_sigterm(previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _on_sigterm(handler):
    """Install a SIGTERM handler (main thread only); return the previous one."""
    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, TypeError):  # not the main thread, or no previous Python handler
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
