"""The stages of a run and the one generic runner that executes them.

The first stage, ``split``, is the pipeline's own: class order and per-task
train / validation / test indices. Every later stage is a *step* of the run's
method (:meth:`model.methods.ContinualMethod.steps`: ``design``, ``train``,
``update``, ``align``, ``eval`` or steps of its own), run by :func:`run_stage`:

    marker present → return the recorded result; otherwise load state → run the
    step → save its state slots → write the marker (with the SHA-256 of every
    output and of the marker itself).

The pipeline knows nothing of a particular method: the plan and the
dependencies come from the method's declared steps. Every stage rebuilds the
network from the backbone checkpoint and the saved state slots, so an
uninterrupted run and a resumed one execute the same code on the same inputs
and end with the same numbers. Random choices come from generators derived
from (seed, session, purpose); library code that draws from torch's global
generator (image transforms) runs inside a forked, seeded RNG.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from pathlib import Path
from typing import Any

import torch

from model.evaluation import peak_memory_mb, reset_peak_memory
from model.methods import ContinualMethod, Step, StepResult, create_method, head_name
from model.methods.context import derived_seed
from model.net import ContinualViT

from ..config import RunConfig, config_to_dict
from ..data import DataSource, Split, load_dataset, make_loader, make_split
from ..data.config import DataConfig
from ..data.device_loader import device_batches
from .backbone_check import cached_backbone, check_backbone_hash
from .nodes import current_node_id
from .spec import RunSpec, read_result
from .state import RunDir, RunStateError, StageKey

__all__ = [
    "RunSpec",
    "StageContext",
    "run_stage",
    "stage_plan",
    "stage_dependencies",
    "stage_seed",
    "method_of",
    "read_result",
    "init_run_dir",
]

_logger = logging.getLogger(__name__)


stage_seed = derived_seed
"""A 63-bit seed derived from (run seed, session, purpose) (:func:`model.methods.context.derived_seed`)."""


def _generator(seed: int, session: int, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(stage_seed(seed, session, purpose))


def method_of(cfg: RunConfig) -> ContinualMethod:
    """The method a config selects, with its settings."""
    return create_method(cfg.method.name, cfg.method.config)


# ------------------------------------------------------------------ the plan
def stage_plan(method: ContinualMethod, num_tasks: int) -> list[StageKey]:
    """Every stage of a run, in an order that respects their dependencies."""
    keys = [StageKey.split()]
    for s in range(len(method.sessions(num_tasks))):
        keys.extend(StageKey(s, step.name) for step in method.session_steps(s))
    return keys


def stage_dependencies(method: ContinualMethod, key: StageKey) -> list[StageKey]:
    """The stages whose outputs ``key`` reads (or that it must follow).

    A step waits for the steps of its session it ``needs``; a step that needs
    none (the first of a session) waits for the split and for every step of the
    previous session that carries state; an ``ordered`` step also waits for
    itself in the previous session.
    """
    if key.stage == "split":
        return []
    s = key.session
    steps: dict[str, Step] = {step.name: step for step in method.session_steps(s)}
    if key.stage not in steps:
        raise ValueError(f"method {method.name!r} has no step {key.stage!r} in session {s}; its steps there: {list(steps)}")
    step = steps[key.stage]
    needs = [name for name in step.needs if name in steps]  # a needed step absent from this session is not waited for
    deps = [StageKey(s, name) for name in needs]
    if not needs:
        deps.insert(0, StageKey.split())
        if s > 0:
            deps.extend(StageKey(s - 1, other.name) for other in method.session_steps(s - 1) if other.carries_state)
    if step.ordered and s > 0 and step.runs_in(s - 1):
        deps.append(StageKey(s - 1, step.name))
    return deps


# ------------------------------------------------------------------ per-process caches
# Sections hash (and compare) by their canonical JSON, so they key these caches directly.
@functools.lru_cache(maxsize=4)
def _cached_source(data: DataConfig, backbone_name: str) -> DataSource:
    from ..data.transforms import resolve_normalization

    return load_dataset(data, resolve_normalization(data.normalization, backbone_name))


def _load_source(cfg: RunConfig) -> DataSource:
    return _cached_source(cfg.data, cfg.backbone.name)


# ------------------------------------------------------------------ the step context
class StageContext:
    """The :class:`~model.methods.StepContext` of one stage, over the run directory.

    Every slot a step saves is recorded (with its SHA-256) for the stage's
    marker; every slot it loads is checked against the checksum recorded by the
    stage that wrote it.
    """

    def __init__(self, spec: RunSpec, key: StageKey) -> None:
        self.spec = spec
        self.key = key
        self.cfg = spec.config
        self.seed = spec.seed
        self.run_dir = RunDir(spec.run_dir)
        self.method = method_of(self.cfg)
        self.sessions = self.method.sessions(self.cfg.data.num_tasks)
        self.session = key.session
        self.tasks = self.sessions[key.session] if key.session >= 0 else []
        self.num_sessions = len(self.sessions)
        self.train = self.cfg.train
        res = self.cfg.resources
        self.device = torch.device("cuda" if res.gpus_per_stage > 0 and torch.cuda.is_available() else "cpu")
        torch.set_num_threads(max(1, int(res.cpus_per_stage)))
        self.outputs: dict[str, str] = {}
        self._writers = self.method.slot_writers()

    # ---------------------------------------------------------------- tasks
    @functools.cached_property
    def source(self) -> DataSource:
        return _load_source(self.cfg)

    @functools.cached_property
    def split(self) -> Split:
        return Split.from_dict(self.run_dir.read_json(RunDir.SPLIT))

    def seen_tasks(self) -> list[int]:
        return [t for s in range(self.session + 1) for t in self.sessions[s]]

    def previous_tasks(self) -> list[int]:
        return [t for s in range(self.session) for t in self.sessions[s]]

    def head_sizes(self) -> dict[str, int]:
        return {head_name(t): len(self.split.task_classes[t]) for t in self.tasks}

    def class_offset(self, task: int) -> int:
        return self.split.class_offset(task)

    def task_labels(self, task: int) -> list[int]:
        offset = self.split.class_offset(task)
        return list(range(offset, offset + len(self.split.task_classes[task])))

    def generator(self, purpose: str) -> torch.Generator:
        return _generator(self.seed, self.session, purpose)

    # ----------------------------------------------------------------- data
    def _indices(self, tasks: list[int], part: str) -> list[int]:
        return [i for t in tasks for i in getattr(self.split, part)[t]]

    def _loader(self, pool, tasks: list[int], part: str, batch_size: int, generator: torch.Generator | None = None, *, train: bool = False):
        data = self.cfg.data
        if data.pipeline == "device" and self.source.images is not None:
            return device_batches(
                pool, self.source.images, self._indices(tasks, part), self.split.label_map(), batch_size,
                train=train, device=self.device, generator=generator, num_workers=data.num_workers,
                cache_dir=data.cache_dir, max_side=data.cache_max_side,
            )
        return make_loader(
            pool,
            self._indices(tasks, part),
            self.split.label_map(),
            batch_size,
            shuffle=generator is not None,
            generator=generator,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def train_batches(self, generator: torch.Generator | None):
        return self._loader(self.source.train, self.tasks, "train", self.cfg.train.batch_size, generator, train=True)

    def measure_batches(self, tasks: list[int]):
        return self._loader(self.source.measure_pool, tasks, "train", self.cfg.train.eval_batch_size)

    def eval_batches(self, task: int, part: str):
        from_test_pool = part == "test" and not self.split.test_from_train
        pool = self.source.test if from_test_pool else self.source.measure_pool
        return self._loader(pool, [task], part, self.cfg.train.eval_batch_size)

    def split_size(self, task: int, part: str) -> int:
        return len(getattr(self.split, part)[task])

    # ---------------------------------------------------------------- state
    def _writer(self, slot: str) -> str:
        if slot not in self._writers:
            raise RunStateError(f"method {self.method.name!r} declares no step that writes state slot {slot!r}")
        return self._writers[slot]

    def load(self, slot: str, session: int | None = None) -> dict[str, torch.Tensor]:
        session = self.session if session is None else session
        relative = RunDir.slot_file(session, slot)
        writer = StageKey(session, self._writer(slot))
        if writer == self.key:
            return self.run_dir.load_tensors(relative)
        if not self.run_dir.is_done(writer):
            raise RunStateError(f"{self.run_dir.file(relative)} is needed by {self.key}, but {writer} has not finished")
        return self.run_dir.load_tensors(relative, self.run_dir.output_sha256(writer, relative))

    def exists(self, slot: str, session: int) -> bool:
        return self.run_dir.is_done(StageKey(session, self._writer(slot)))

    def save(self, slot: str, tensors: dict[str, torch.Tensor]) -> None:
        relative = RunDir.slot_file(self.session, slot)
        self.outputs[relative] = self.run_dir.save_tensors(relative, tensors)

    @property
    def _checkpoint(self) -> Path:
        return self.run_dir.file(RunDir.checkpoint_file(self.key))

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self._checkpoint.is_file():
            return None
        _logger.info("%s: resuming %s from its checkpoint", self.spec.label, self.key)
        return torch.load(self._checkpoint, map_location="cpu", weights_only=True)

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        tmp = self._checkpoint.with_name(self._checkpoint.name + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, tmp)
        tmp.replace(self._checkpoint)

    def clear_checkpoint(self) -> None:
        self._checkpoint.unlink(missing_ok=True)

    # -------------------------------------------------------------- network
    def build_net(self, sessions_done: int) -> ContinualViT:
        backbone = cached_backbone(self.cfg.backbone)
        check_backbone_hash(self.run_dir, self.cfg.backbone, backbone)  # the run's own backbone
        net = self.method.build_net(copy.deepcopy(backbone))
        self.method.restore(net, self, sessions_done)
        net.freeze_all()
        return net.to(self.device)


# ---------------------------------------------------------------------------- split
def split_stage(spec: RunSpec) -> tuple[StepResult, dict[str, str]]:
    """Class order and per-task indices, written to ``split.json``."""
    cfg, run_dir = spec.config, RunDir(spec.run_dir)
    data = cfg.data
    split = make_split(
        _load_source(cfg), data.num_tasks, spec.seed, data.class_order, data.val_fraction, data.max_train_per_class, data.test_fraction,
        split_seed=data.split_seed,
    )
    run_dir.write_json(RunDir.SPLIT, split.to_dict())
    info = {
        "class_order": split.class_order,
        "task_classes": split.task_classes,
        "train_sizes": [len(x) for x in split.train],
        "val_sizes": [len(x) for x in split.val],
        "test_sizes": [len(x) for x in split.test],
        "protocol": split.protocol,
    }
    return StepResult(info=info), {RunDir.SPLIT: run_dir.file_sha256(RunDir.SPLIT)}


def run_stage(spec: RunSpec, key: StageKey, *_upstream: Any) -> dict[str, Any]:
    """Run one stage if its marker is absent; return its recorded result (as stored).

    ``_upstream`` receives the results of the stages this one depends on; the
    scheduler passes them only to order the work.
    """
    run_dir = RunDir(spec.run_dir)
    if run_dir.is_done(key):
        return run_dir.read_done(key)
    run_dir.log_event(key, "start")
    started = time.perf_counter()
    reset_peak_memory(torch.device("cuda") if spec.config.resources.gpus_per_stage > 0 and torch.cuda.is_available() else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stage_seed(spec.seed, key.session, f"global/{key.stage}"))
        if key.stage == "split":
            result, outputs = split_stage(spec)
            device = "cpu"
        else:
            ctx = StageContext(spec, key)
            result = ctx.method.run_step(key.stage, ctx)
            outputs, device = ctx.outputs, str(ctx.device)
    result.wall_time_s = time.perf_counter() - started
    result.device = device
    result.info["peak_memory_mb"] = peak_memory_mb(torch.device(device))
    result.node_id = current_node_id()
    run_dir.mark_done(key, result.to_dict(), outputs)
    run_dir.log_event(key, "finish", wall_time_s=result.wall_time_s, node_id=result.node_id)
    return run_dir.read_done(key)


def init_run_dir(spec: RunSpec, versions: dict[str, str]) -> RunDir:
    """Create the run directory, or check an existing one belongs to this config and seed."""
    run_dir = RunDir(spec.run_dir)
    record = {"config": config_to_dict(spec.config), "seed": spec.seed, "result_key": spec.config.result_key(), "versions": versions}
    existing = run_dir.file(RunDir.RUN)
    if existing.is_file():
        old = run_dir.read_json(RunDir.RUN)
        if old.get("result_key") != record["result_key"] or old.get("seed") != spec.seed:
            raise RunStateError(
                f"{run_dir.path} holds a run of another configuration or seed "
                f"(result key {old.get('result_key')}, seed {old.get('seed')}); choose another output_dir or name"
            )
        return run_dir
    Path(run_dir.path).mkdir(parents=True, exist_ok=True)
    run_dir.write_json(RunDir.RUN, record)
    return run_dir
