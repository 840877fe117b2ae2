"""Drive many runs at once: submit their stages, log results as they finish.

``execute`` is what ``inflora run`` calls. For each run it creates (or checks)
the run directory, opens its MLflow run, submits every unfinished stage with its
dependencies to the executor and, while the cluster works, announces each
finished stage to its subscribers: the tracker (which syncs the run directory
to MLflow) and the caller's ``on_stage``. Finished stages are skipped, so
running the same command again resumes every run where it stopped.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.backbone import BackboneError
from model.methods import ContinualMethod, StepResult

from ..config import ConfigError, RunConfig
from ..reporting.results import RunResults, collect_results
from ..tracking.offline import GuardedTracker, TrackingUnavailable
from ..tracking.tracker import RunTracker, package_versions
from .backbone_check import record_backbone_hash
from .lock import locked_runs
from .pretrain import ensure_backbone
from .resources import ResourceError, ensure_executor_fits
from .scheduler import Executor, create_executor
from .spec import spec_from_run_dir
from .stages import RunSpec, init_run_dir, method_of, read_result, stage_dependencies, stage_plan
from .state import IntegrityError, RunDir, StageKey

__all__ = ["RunOutcome", "RunFailed", "make_specs", "execute", "spec_from_run_dir"]

_logger = logging.getLogger(__name__)

StageCallback = Callable[[RunSpec, StageKey, StepResult], None]


class RunFailed(RuntimeError):
    """One or more runs failed; the message lists them."""


REFUSALS = (ConfigError, BackboneError, ResourceError, TrackingUnavailable, ConnectionError)
"""What ``execute`` raises when it refuses to start (no backbone, no cluster, no node that fits,
no tracking server): the run directories it had created are removed again."""


@dataclass
class RunOutcome:
    """What a run ended with."""

    spec: RunSpec
    run_dir: RunDir
    sessions: list[list[int]]
    run_id: str | None = None
    status: str = "RUNNING"
    error: str | None = None
    summary: dict[str, float] = field(default_factory=dict)
    tracker: RunTracker | None = field(default=None, repr=False)
    subscribers: list[StageCallback] = field(default_factory=list, repr=False)

    def results(self) -> RunResults:
        return collect_results(self.run_dir, self.sessions)


def run_dir_name(cfg: RunConfig, seed: int) -> str:
    return f"{cfg.name}-{cfg.method.name}-seed{seed}-{cfg.result_key()}"


def make_specs(cfg: RunConfig, seeds: Sequence[int] | None = None) -> list[RunSpec]:
    """One run per seed, each with its own directory under ``cfg.output_dir``."""
    return [RunSpec(cfg, int(seed), str(Path(cfg.output_dir) / run_dir_name(cfg, int(seed)))) for seed in (seeds or cfg.seeds)]


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="stages", unit="stage", dynamic_ncols=True)

    def advance(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@locked_runs(discard_on=REFUSALS)  # one driver per run directory: a second command fails at once, naming the first
def execute(
    specs: Sequence[RunSpec],
    *,
    executor: Executor | None = None,
    progress: bool = True,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    on_stage: StageCallback | None = None,
    raise_on_failure: bool = True,
    notify: Callable[[str], None] | None = None,
    tracker: RunTracker | None = None,
) -> list[RunOutcome]:
    """Run (or resume) every run in ``specs`` to the end.

    Args:
        specs: the runs; they share the executor's cluster.
        executor: where stages run (from the first config's resources when ``None``).
        progress: show a progress bar of finished stages.
        parent_run_id: MLflow run to nest the runs under (sweeps).
        tags: extra MLflow tags for every run.
        on_stage: called in the driver after each stage finishes (and is logged), and
            for each stage finished before.
        raise_on_failure: raise :class:`RunFailed` at the end if any run failed.
        notify: told, one line each, what happens before the stages run: a backbone
            pretrained or taken from the cache, stages already done and skipped
            (``print`` in the CLI; the module's log otherwise).
        tracker: the tracker of every run that tracks (default: a :class:`GuardedTracker`
            per tracking store and experiment).
    """
    if not specs:
        return []
    versions = package_versions()
    for spec in specs:
        ensure_backbone(spec.config.backbone, spec.config.data, progress=progress, notify=notify)
    executor = executor or create_executor(specs[0].config.resources)
    ensure_executor_fits(executor, [spec.config.resources for spec in specs])  # refuse what no node can run
    trackers: dict[tuple[str, ...], RunTracker] = {}
    outcomes: list[RunOutcome] = []
    pending: dict[Any, tuple[RunOutcome, StageKey]] = {}
    todo = 0
    for spec in specs:
        cfg = spec.config
        method = method_of(cfg)
        run_dir = init_run_dir(spec, versions)
        record_backbone_hash(run_dir, cfg.backbone)  # every stage checks its backbone against it
        repair_run_dir(run_dir, method, cfg.data.num_tasks)
        outcome = RunOutcome(spec, run_dir, method.sessions(cfg.data.num_tasks))
        outcomes.append(outcome)
        if cfg.tracking.enabled:
            key = (cfg.tracking.uri or "", cfg.tracking.experiment)
            # an outage never stops the runs
            outcome.tracker = tracker or trackers.get(key) or trackers.setdefault(key, GuardedTracker(cfg.tracking))
            outcome.run_id = outcome.tracker.open_run(spec, run_dir, parent_run_id=parent_run_id, tags=tags)
            outcome.tracker.sync(run_dir)  # what finished before
            outcome.subscribers.append(outcome.tracker.on_stage)
        if on_stage is not None:
            outcome.subscribers.append(on_stage)
        handles: dict[StageKey, Any] = {}
        plan = stage_plan(method, cfg.data.num_tasks)
        done = sum(run_dir.is_done(key) for key in plan)
        if done:
            (notify or _logger.info)(f"{spec.label}: resuming {run_dir.path}: {done} of {len(plan)} stages already done, skipped")
        for key in plan:
            if run_dir.is_done(key):
                handles[key] = None
                if on_stage is not None:
                    on_stage(spec, key, read_result(run_dir, key))
                continue
            upstream = [handles[d] for d in stage_dependencies(method, key) if handles[d] is not None]
            handles[key] = executor.submit(spec, key, upstream)
            pending[handles[key]] = (outcome, key)
            todo += 1

    bar = _Progress(todo, progress)
    try:
        while pending:
            finished, _ = executor.wait(list(pending))
            for handle in finished:
                outcome, key = pending.pop(handle)
                try:
                    info = StepResult.from_dict(executor.result(handle))
                except Exception as exc:  # the stage (or one it depends on) failed
                    if outcome.error is None:
                        outcome.error = f"{key}: {type(exc).__name__}: {exc}"
                        _logger.info("%s failed at %s:\n%s", outcome.spec.label, key, "".join(traceback.format_exception(exc)))
                    outcome.status = "FAILED"
                    bar.advance(f"{outcome.spec.label} {key} FAILED")
                    continue
                for subscriber in outcome.subscribers:
                    subscriber(outcome.spec, key, info)
                bar.advance(f"{outcome.spec.label} {key}")
    except BaseException as exc:  # interrupted (Ctrl-C, SIGTERM) or the driver failed: no MLflow run stays RUNNING
        stopped = isinstance(exc, (KeyboardInterrupt, SystemExit))
        for outcome in outcomes:
            if outcome.tracker is not None and outcome.status == "RUNNING":
                error = "interrupted; resume with the same command" if stopped else f"driver: {type(exc).__name__}: {exc}"
                outcome.tracker.fail(outcome.run_dir, error, status="KILLED" if stopped else "FAILED")
        raise
    finally:
        bar.close()

    for outcome in outcomes:
        tracker = outcome.tracker
        if outcome.status == "FAILED":
            if tracker is not None:
                tracker.fail(outcome.run_dir, outcome.error or "failed")
            continue
        if tracker is not None:
            outcome.summary = tracker.finish(outcome.run_dir)
        else:
            outcome.summary = outcome.results().summary("test")
        outcome.status = "FINISHED"
    failed = [o for o in outcomes if o.status == "FAILED"]
    if failed and raise_on_failure:
        lines = "\n".join(f"  {o.spec.label} ({o.run_dir.path}): {o.error}" for o in failed)
        raise RunFailed(f"{len(failed)} of {len(outcomes)} runs failed; fix the cause and re-run the same command to resume:\n{lines}")
    return outcomes


def downstream(method: ContinualMethod, num_tasks: int, key: StageKey) -> list[StageKey]:
    """``key`` and every stage that depends on it, directly or not, in plan order."""
    affected = {key}
    for other in stage_plan(method, num_tasks):
        if any(d in affected for d in stage_dependencies(method, other)):
            affected.add(other)
    return [k for k in stage_plan(method, num_tasks) if k in affected]


def repair_run_dir(run_dir: RunDir, method: ContinualMethod, num_tasks: int) -> list[StageKey]:
    """Check every finished stage's marker and outputs; re-open those that fail and everything after them.

    A stage whose marker or output does not match its recorded SHA-256 is never
    reused: its marker, and the markers of every stage downstream of it, are
    removed (with a warning naming the file), so that they run again.

    Returns:
        The stages re-opened.
    """
    reopened: list[StageKey] = []
    for key in stage_plan(method, num_tasks):
        if key in reopened or not run_dir.is_done(key):
            continue
        try:
            run_dir.verify(key)
        except IntegrityError as exc:
            again = [k for k in downstream(method, num_tasks, key) if run_dir.is_done(k)]
            _logger.warning("%s; re-running %s", exc, ", ".join(map(str, again)))
            for k in again:
                run_dir.unmark(k)
            reopened.extend(again)
    return reopened


def verify_run_dir(run_dir: RunDir, method: ContinualMethod, num_tasks: int) -> None:
    """Check every finished stage of a run for readers that must not repair (``inflora eval``).

    Raises:
        IntegrityError: naming the file that does not match, and the command that re-runs it.
    """
    for key in stage_plan(method, num_tasks):
        if run_dir.is_done(key):
            try:
                run_dir.verify(key)
            except IntegrityError as exc:
                raise IntegrityError(
                    f"{exc}; `inflora run --resume {run_dir.path}` re-runs {key} and every stage after it", exc.path, key
                ) from None
