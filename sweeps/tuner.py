"""Run a sweep with Ray Tune: OptunaSearch in a ConcurrencyLimiter, ASHA, an Optuna RDB study.

This module only assembles Ray Tune's pieces:

* the trainable :func:`sweeps.trial.run_trial` with the trial's resources
  (``tune.with_resources``) and the sweep bound by ``tune.with_parameters``;
* :class:`OptunaSearch` over the space's Optuna distributions, with the
  configured sampler and an RDB storage (sqlite in the sweep directory by
  default), so the study opens in optuna-dashboard and outlives the driver;
* ``ConcurrencyLimiter`` for ``max_concurrent``; ``ASHAScheduler`` with the task
  count as time attribute; ``RunConfig(storage_path=…)``, ``FailureConfig``,
  ``CheckpointConfig``; ``Tuner.restore`` to resume;
* :class:`~sweeps.tracking.SweepCallback`: MLflow's parent and trial runs.

Ray Tune and Optuna keep the trials' books (Tune's experiment state, the Optuna
study); the summary reads Tune's and the trials' run directories.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import yaml
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from pipeline.config import ConfigError
from pipeline.running.pretrain import ensure_backbone
from pipeline.running.scheduler import init_ray

from .config import SWEEP_FILE, Sweep
from .results import SweepSummary, summarize_sweep, write_summary
from .trial import METRIC, TIME_ATTR, run_trial

__all__ = [
    "SweepOutcome",
    "TUNE_TRIAL_ATTR",
    "TaskAwareOptunaSearch",
    "create_scheduler",
    "create_searcher",
    "create_trainable",
    "open_study",
    "run_sweep",
]

_logger = logging.getLogger(__name__)
MODE = "max"


TUNE_TRIAL_ATTR = "tune_trial_id"
"""The Optuna trial's user attribute that names its Ray Tune trial."""


class _TaggedSpace:
    """OptunaSearch's define-by-run space: suggests the sweep's distributions through Optuna's
    public ``suggest_*`` and tags the Optuna trial with the Ray Tune trial it belongs to."""

    def __init__(self, distributions: dict[str, Any]) -> None:
        self.distributions = distributions
        self.trial_id: str | None = None

    def __call__(self, trial) -> None:
        from optuna.distributions import CategoricalDistribution, IntDistribution

        trial.set_user_attr(TUNE_TRIAL_ATTR, self.trial_id)
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, IntDistribution):
                trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


class TaskAwareOptunaSearch(OptunaSearch):
    """Ray Tune's OptunaSearch, told which trials the scheduler stopped early.

    OptunaSearch records every trial that reported the metric as COMPLETE with
    its last value. For a trial ASHA stopped after k of n tasks that value is
    the average accuracy over k tasks, which is not comparable to a complete
    trial's (fewer tasks, less forgetting); this subclass tells Optuna such a
    trial was PRUNED, as Optuna's own pruners do, keeping its per-task values as
    intermediate values. Each Optuna trial carries its Ray Tune trial id
    (:data:`TUNE_TRIAL_ATTR`); on restore, the study trials a killed driver left
    RUNNING before Ray Tune had recorded them are failed (they will never report).
    Only Optuna's public API is used: the study is reopened by name.

    Args:
        distributions: ``{name: optuna distribution}`` of the search space.
        study_name, storage: the Optuna study (an RDB storage outlives the driver).
        max_t: the number of tasks (a trial that reports fewer was stopped).
        **kwargs: passed to :class:`OptunaSearch`.
    """

    def __init__(self, distributions: dict[str, Any], *, study_name: str, storage: Any, max_t: int, **kwargs: Any) -> None:
        self._max_t = max_t
        self._study = (study_name, storage)
        self._suggested: set[str] = set()  # pickled with the searcher: what Tune's snapshot knows
        super().__init__(_TaggedSpace(distributions), study_name=study_name, storage=storage, **kwargs)

    def suggest(self, trial_id: str):
        self._space.trial_id = trial_id
        params = super().suggest(trial_id)
        if params is not None:
            self._suggested.add(trial_id)
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and not error and int(result.get(TIME_ATTR, self._max_t)) < self._max_t:
            result = {k: v for k, v in result.items() if k != self.metric}  # no value → PRUNED
        super().on_trial_complete(trial_id, result=result, error=error)

    def restore(self, checkpoint_path: str) -> None:
        import optuna

        super().restore(checkpoint_path)
        study_name, storage = self._study
        study = optuna.load_study(study_name=study_name, storage=storage)
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.user_attrs.get(TUNE_TRIAL_ATTR) not in self._suggested:
                study.tell(frozen.number, state=TrialState.FAIL)
                _logger.info("Optuna trial %d was lost with the killed driver; marked FAIL", frozen.number)


def open_study(sweep: Sweep):
    """The Optuna study of ``sweep`` (``None`` when its storage holds none yet)."""
    import optuna

    storage = _storage(sweep)
    if sweep.study_name not in optuna.study.get_all_study_names(storage):
        return None
    return optuna.load_study(study_name=sweep.study_name, storage=storage)


def _storage(sweep: Sweep):
    import optuna

    url = sweep.storage_url
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):
        sweep.dir.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def create_searcher(sweep: Sweep):
    """OptunaSearch (the configured sampler, the RDB study) in a ConcurrencyLimiter."""
    from ray.tune.search import ConcurrencyLimiter

    search = TaskAwareOptunaSearch(
        sweep.space.distributions(),
        metric=METRIC,
        mode=MODE,
        points_to_evaluate=[dict(p) for p in sweep.config.enqueue] or None,
        sampler=sweep.config.sampler.create(),
        study_name=sweep.study_name,
        storage=_storage(sweep),
        max_t=sweep.num_sessions,
    )
    return ConcurrencyLimiter(search, max_concurrent=sweep.config.max_concurrent)


def create_scheduler(sweep: Sweep):
    """ASHA over the tasks (stops trials behind the others after ``grace_period`` tasks), or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    cfg = sweep.config.scheduler
    if cfg.name == "fifo":
        return FIFOScheduler()
    max_t = sweep.num_sessions
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=max_t,
        grace_period=min(cfg.grace_period, max_t),
        reduction_factor=cfg.reduction_factor,
    )


def create_trainable(sweep: Sweep):
    """``run_trial`` with the sweep bound and the trial's resources reserved.

    A trial runs its stages in its own worker, so one bundle of ``cpu``/``gpu`` is
    all it needs: no nested Ray tasks, hence no placement group and no way for
    concurrent trials to deadlock the cluster waiting for each other's CPUs.
    """
    from ray import tune

    res = sweep.config.resources_per_trial
    return tune.with_resources(tune.with_parameters(run_trial, sweep=sweep), {"cpu": res.cpu, "gpu": res.gpu})


def _trial_dirname(trial) -> str:
    return f"tune_{trial.trial_id}"


@dataclass
class SweepOutcome:
    """What a sweep ended with."""

    sweep: Sweep
    summary: SweepSummary
    complete: bool
    parent_run_id: str | None
    results: Any = None  # ray.tune.ResultGrid


def _check_resume_matches(sweep: Sweep) -> None:
    stored = sweep.dir / SWEEP_FILE
    if not stored.is_file():
        return
    old = yaml.safe_load(stored.read_text())
    new = sweep.to_dict()
    for part in ("space", "seeds", "enqueue", "sampler", "scheduler"):
        if old["sweep"].get(part) != new["sweep"].get(part):
            raise ConfigError(
                f"{sweep.dir} was started with another sweep.{part} ({old['sweep'].get(part)!r}); "
                f"resume it with `inflora sweep --resume {sweep.dir}` or choose another sweep.name"
            )
    old_base = {k: v for k, v in old.items() if k != "sweep"}
    from pipeline.config import config_from_dict

    if config_from_dict(old_base).result_key() != sweep.base.result_key():
        raise ConfigError(f"{sweep.dir} was started from another run config; resume it with `inflora sweep --resume {sweep.dir}`")


def run_sweep(sweep: Sweep, *, resume: bool = False, verbose: int = 1) -> SweepOutcome:
    """Run ``sweep`` to the end, or resume it from its directory.

    Args:
        sweep: the validated sweep.
        resume: continue the sweep in ``sweep.dir`` (``Tuner.restore``: finished trials
            are kept, unfinished ones continue from their last finished stage); start
            it when nothing is there yet.
        verbose: Ray Tune's console verbosity (0 silent, 1 progress table).

    Raises:
        ConfigError: the sweep directory or the Optuna study already holds a sweep
            (and ``resume`` is false), or holds another configuration.
    """
    from ray import tune

    restorable = tune.Tuner.can_restore(str(sweep.dir))
    if restorable and not resume:
        raise ConfigError(
            f"{sweep.dir} holds a sweep already: resume it with `inflora sweep --resume {sweep.dir}`, "
            "or choose another sweep.name"
        )
    if restorable:
        _check_resume_matches(sweep)
    elif open_study(sweep) is not None:
        raise ConfigError(
            f"the Optuna storage {sweep.storage_url} holds a study {sweep.study_name!r} without this sweep's "
            "Ray Tune state; choose another sweep.name or sweep.study_name"
        )
    if resume and not restorable:
        _logger.warning("nothing to resume in %s: starting the sweep", sweep.dir)

    ensure_backbone(sweep.base.backbone, sweep.base.data, progress=verbose > 0)  # once, not per trial
    sweep.dir.mkdir(parents=True, exist_ok=True)
    if not restorable:
        (sweep.dir / SWEEP_FILE).write_text(yaml.safe_dump(sweep.to_dict(), sort_keys=False))

    from .tracking import SweepCallback, SweepTracker

    tracker = SweepTracker(sweep) if sweep.base.tracking.enabled else None
    if tracker is not None:
        tracker.open_parent()
    callback = SweepCallback(sweep, track=tracker is not None)

    # What makes a killed driver resumable is Tune's snapshot of the experiment: every trial
    # checkpoint (after each task) forces one, which is intended, not a bottleneck to warn
    # about; and a snapshot at most 2 s old (default: 10 s or more) records new trials soon
    # after they start. Both are cheap: the state is a small JSON file and the searcher's pickle.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    init_ray(sweep.base.resources.num_cpus)
    trainable = create_trainable(sweep)
    if restorable:
        tuner = tune.Tuner.restore(str(sweep.dir), trainable=trainable, resume_unfinished=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode=MODE,
                search_alg=create_searcher(sweep),
                scheduler=create_scheduler(sweep),
                num_samples=sweep.config.num_samples,
                reuse_actors=sweep.config.reuse_actors,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=sweep.name,
                storage_path=str(sweep.dir.parent),
                failure_config=tune.FailureConfig(max_failures=sweep.config.max_failures),
                # One checkpoint per trial, and Tune snapshots the experiment whenever a
                # trial checkpoints (num_to_keep): a killed driver loses at most one report.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[callback],
                verbose=verbose,
            ),
        )
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:
        if tracker is not None:
            tracker.end_parent("KILLED", f"interrupted; resume with: inflora sweep --resume {sweep.dir}")
        raise
    complete = grid.num_terminated + grid.num_errors == len(grid) == sweep.config.num_samples
    summary = summarize_sweep(sweep)
    write_summary(summary)
    if tracker is not None:
        tracker.close_trials(summary)  # what a killed driver left open, as Tune's books say
        tracker.log_summary(summary)
        if complete:
            tracker.end_parent("FINISHED")
        else:
            tracker.end_parent("KILLED", f"interrupted; resume with: inflora sweep --resume {sweep.dir}")
    return SweepOutcome(sweep, summary, complete, tracker.parent_run_id if tracker else None, grid)

