"""The stages of a run: plain functions of (run spec, stage) that read the run
directory, compute, and write their outputs before their marker.

Per session s (one task for InfLoRA), in order:

* ``split``  (once) — class order, per-task train / validation / test indices;
* ``design`` — covariance pass over the session's training data, designed down-projections;
* ``train``  — the session's up-projections and heads (only);
* ``update`` — covariance pass after training, memory update (methods with memory);
* ``align``  — class-wise feature statistics and head re-training (``inflora_ca``);
* ``eval``   — accuracy on every seen task's test (and validation) split: row s of R.

Every stage rebuilds the network from the backbone checkpoint and the saved
adapters, so an uninterrupted run and a resumed one execute the same code on
the same inputs and end with the same numbers. Random choices come from
generators derived from (seed, session, purpose); library code that draws from
torch's global generator (image transforms) runs inside a forked, seeded RNG.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.backbone import create_backbone
from model.lora import BranchChange, LoRABranch
from model.methods import ContinualMethod, Design, create_method, head_name
from model.net import ContinualViT
from model.subspace import memory_bank_from_state, memory_bank_state
from model.training import make_optimizer, predict, probe_sq_norm, train_session

from .backbone_check import check_backbone_hash
from .config import RunConfig, config_to_dict
from .data import DataSource, Split, load_dataset, make_loader, make_split
from .state import RunDir, RunStateError, StageKey

__all__ = ["RunSpec", "run_stage", "stage_plan", "stage_seed", "StageContext"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    """A run: a configuration, a seed, and the directory its state lives in."""

    config: RunConfig
    seed: int
    run_dir: str

    @property
    def label(self) -> str:
        return f"{self.config.name}/{self.config.method.name}/seed{self.seed}"


def stage_seed(seed: int, session: int, purpose: str) -> int:
    """A 63-bit seed derived from (run seed, session, purpose)."""
    digest = hashlib.sha256(f"{seed}/{session}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(seed: int, session: int, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(stage_seed(seed, session, purpose))


# ------------------------------------------------------------------ per-process caches
@functools.lru_cache(maxsize=4)
def _cached_source(data_json: str, backbone_name: str) -> DataSource:
    from .config import DataConfig
    from .data.transforms import resolve_normalization

    data = DataConfig(**json.loads(data_json))
    return load_dataset(data, resolve_normalization(data.normalization, backbone_name))


@functools.lru_cache(maxsize=2)
def _cached_backbone(backbone_json: str) -> torch.nn.Module:
    b = json.loads(backbone_json)
    return create_backbone(b["name"], pretrained=b["pretrained"], checkpoint=b["checkpoint"], overrides=b["overrides"],
                           init_seed=b.get("init_seed", 0))


def stage_plan(method: ContinualMethod, num_tasks: int) -> list[StageKey]:
    """Every stage of a run, in an order that respects their dependencies."""
    keys = [StageKey.split()]
    for s in range(len(method.sessions(num_tasks))):
        keys.append(StageKey(s, "design"))
        keys.append(StageKey(s, "train"))
        if method.uses_memory:
            keys.append(StageKey(s, "update"))
        if method.aligns_heads:
            keys.append(StageKey(s, "align"))
        keys.append(StageKey(s, "eval"))
    return keys


def stage_dependencies(method: ContinualMethod, key: StageKey) -> list[StageKey]:
    """The stages whose outputs ``key`` reads."""
    s = key.session
    if key.stage == "split":
        return []
    if key.stage == "design":
        deps = [StageKey.split()]
        if s > 0:
            deps.append(StageKey(s - 1, "train"))
            if method.uses_memory:
                deps.append(StageKey(s - 1, "update"))
        return deps
    if key.stage == "train":
        return [StageKey(s, "design")]
    if key.stage == "update":
        return [StageKey(s, "train")]
    if key.stage == "align":  # statistics of earlier sessions are read
        return [StageKey(s, "train")] + ([StageKey(s - 1, "align")] if s > 0 else [])
    if key.stage == "eval":  # after the previous eval too, so rows are logged in order
        deps = [StageKey(s, "train")] + ([StageKey(s - 1, "eval")] if s > 0 else [])
        return deps + ([StageKey(s, "align")] if method.aligns_heads else [])
    raise ValueError(f"unknown stage {key.stage!r}")


class StageContext:
    """What every stage needs: config, method, data, split, device, network restore."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.cfg = spec.config
        self.seed = spec.seed
        self.run_dir = RunDir(spec.run_dir)
        self.method = create_method(self.cfg.method, self.cfg.lora)
        self.sessions = self.method.sessions(self.cfg.data.num_tasks)
        res = self.cfg.resources
        self.device = torch.device("cuda" if res.gpus_per_stage > 0 and torch.cuda.is_available() else "cpu")
        torch.set_num_threads(max(1, int(res.cpus_per_stage)))

    # ------------------------------------------------------------------ data
    @functools.cached_property
    def source(self) -> DataSource:
        return _cached_source(json.dumps(config_to_dict(self.cfg.data), sort_keys=True), self.cfg.backbone.name)

    @functools.cached_property
    def split(self) -> Split:
        return Split.from_dict(self.run_dir.read_json("split.json"))

    def session_tasks(self, session: int) -> list[int]:
        return self.sessions[session]

    def _indices(self, tasks: list[int], part: str) -> list[int]:
        return [i for t in tasks for i in getattr(self.split, part)[t]]

    def train_loader(self, session: int, generator: torch.Generator | None):
        """Training data of a session; shuffled by ``generator`` (in order when ``None``)."""
        return make_loader(
            self.source.train,
            self._indices(self.session_tasks(session), "train"),
            self.split.label_map(),
            self.cfg.train.batch_size,
            shuffle=generator is not None,
            generator=generator,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def measure_loader(self, tasks: list[int]):
        """Training samples of ``tasks`` with test-time transforms, in order (statistics passes)."""
        return make_loader(
            self.source.measure_pool,
            self._indices(tasks, "train"),
            self.split.label_map(),
            self.cfg.train.eval_batch_size,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def eval_loader(self, task: int, part: str):
        from_test_pool = part == "test" and not self.split.test_from_train
        pool = self.source.test if from_test_pool else self.source.measure_pool
        return make_loader(
            pool,
            self._indices([task], part),
            self.split.label_map(),
            self.cfg.train.eval_batch_size,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    # --------------------------------------------------------------- network
    def build_net(self, sessions_done: int) -> ContinualViT:
        """The network after ``sessions_done`` sessions, rebuilt from saved adapters."""
        backbone_json = json.dumps(config_to_dict(self.cfg.backbone), sort_keys=True)
        check_backbone_hash(self.run_dir, self.cfg.backbone, _cached_backbone(backbone_json))  # the run's own backbone
        net = ContinualViT(copy.deepcopy(_cached_backbone(backbone_json)), self.cfg.lora.blocks)
        for s in range(sessions_done):
            net.load_adapter_state(self.run_dir.load_tensors(f"session_{s:03d}/adapter.safetensors"), self.cfg.method.train_down)
        if self.method.aligns_heads:
            aligned = [s for s in range(sessions_done) if self.run_dir.is_done(StageKey(s, "align"))]
            if aligned:  # the heads as re-trained after the latest aligned session
                net.load_adapter_state(self.run_dir.load_tensors(f"session_{aligned[-1]:03d}/aligned_heads.safetensors"))
        net.freeze_all()
        return net.to(self.device)

    def memory(self, session: int):
        """Memory bank after ``session`` (``None`` before the first session or without memory)."""
        if session < 0 or not self.method.uses_memory:
            return None
        return memory_bank_from_state(self.run_dir.load_tensors(f"session_{session:03d}/memory.safetensors"))

    def head_sizes(self, session: int) -> dict[str, int]:
        return {head_name(t): len(self.split.task_classes[t]) for t in self.session_tasks(session)}


# ---------------------------------------------------------------------------- stages
def split_stage(ctx: StageContext, session: int) -> dict[str, Any]:
    data = ctx.cfg.data
    split = make_split(
        ctx.source, data.num_tasks, ctx.seed, data.class_order, data.val_fraction, data.max_train_per_class, data.test_fraction
    )
    ctx.run_dir.write_json("split.json", split.to_dict())
    return {
        "class_order": split.class_order,
        "task_classes": split.task_classes,
        "train_sizes": [len(x) for x in split.train],
        "val_sizes": [len(x) for x in split.val],
        "test_sizes": [len(x) for x in split.test],
    }


def design_stage(ctx: StageContext, session: int) -> dict[str, Any]:
    net = ctx.build_net(session)
    design = ctx.method.design(
        net,
        session,
        ctx.train_loader(session, None),
        ctx.memory(session - 1),
        ctx.device,
        _generator(ctx.seed, session, "design"),
    )
    ctx.run_dir.save_tensors(f"session_{session:03d}/design.safetensors", design.downs)
    return {"metrics": design.info, "new_branch": bool(design.downs)}


def train_stage(ctx: StageContext, session: int) -> dict[str, Any]:
    rd, spec = ctx.run_dir, ctx.cfg.train
    net = ctx.build_net(session)
    design = Design(rd.load_tensors(f"session_{session:03d}/design.safetensors"))
    params = ctx.method.begin_session(net, session, design, ctx.head_sizes(session), _generator(ctx.seed, session, "heads"))
    tasks = ctx.session_tasks(session)
    heads = [head_name(t) for t in tasks]
    shuffle = _generator(ctx.seed, session, "shuffle")
    head_params = [p for h in heads for p in net.heads.heads[h].parameters()]
    optimizer, scheduler = make_optimizer(params, spec, head_params)
    checkpoint = rd.file(f"session_{session:03d}/train_checkpoint.pt")
    history: list[dict[str, float]] = []
    start_epoch = 0
    trained = ctx.method.trained_branches([session])
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        net.load_adapter_state(state["adapter"], ctx.cfg.method.train_down)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["global_rng"])
        history = json.loads(bytes(state["history"].tolist()).decode())
        start_epoch = len(history)
        _logger.info("%s: resuming session %d at epoch %d", ctx.spec.label, session, start_epoch)

    def on_epoch_end(epoch: int, loss: float, accuracy: float) -> None:
        history.append({"epoch": epoch, "loss": loss, "train_accuracy": accuracy})
        if epoch + 1 < spec.epochs:  # the last epoch is saved as the adapter itself
            payload = {
                "adapter": net.adapter_state(trained, heads),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "shuffle_rng": shuffle.get_state(),
                "global_rng": torch.get_rng_state(),
                "history": torch.tensor(list(json.dumps(history).encode()), dtype=torch.uint8),
            }
            tmp = checkpoint.with_name(checkpoint.name + ".tmp")
            torch.save(payload, tmp)
            tmp.replace(checkpoint)

    train_session(
        net,
        params,
        ctx.train_loader(session, shuffle),
        spec,
        head_names=heads,
        class_offset=ctx.split.class_offset(tasks[0]),
        device=ctx.device,
        optimizer=optimizer,
        scheduler=scheduler,
        start_epoch=start_epoch,
        on_epoch_end=on_epoch_end,
    )
    rd.save_tensors(f"session_{session:03d}/adapter.safetensors", net.adapter_state(trained, heads))
    checkpoint.unlink(missing_ok=True)
    return {"epochs": history, "trainable_parameters": int(sum(p.numel() for p in params))}


def update_stage(ctx: StageContext, session: int) -> dict[str, Any]:
    net = ctx.build_net(session + 1)
    bank, info = ctx.method.update_memory(
        net, session, len(ctx.sessions), ctx.train_loader(session, None), ctx.memory(session - 1), ctx.device
    )
    if bank is None:
        raise RunStateError(f"method {ctx.method.name!r} declares a memory but returned none")
    ctx.run_dir.save_tensors(f"session_{session:03d}/memory.safetensors", memory_bank_state(bank))
    return {"metrics": info}


def align_stage(ctx: StageContext, session: int) -> dict[str, Any]:
    net = ctx.build_net(session + 1)
    stats = ctx.method.class_statistics(net, ctx.measure_loader(ctx.session_tasks(session)), ctx.device)
    ctx.run_dir.save_tensors(
        f"session_{session:03d}/class_stats.safetensors",
        {f"{kind}/{label}": value[i] for label, value in stats.items() for i, kind in enumerate(("mean", "cov"))},
    )
    for s in range(session):
        earlier = ctx.run_dir.load_tensors(f"session_{s:03d}/class_stats.safetensors")
        for key in earlier:
            if key.startswith("mean/"):
                label = int(key.split("/")[1])
                stats[label] = (earlier[key], earlier[f"cov/{label}"])
    seen = [t for s in range(session + 1) for t in ctx.session_tasks(s)]
    task_labels = [list(range(ctx.split.class_offset(t), ctx.split.class_offset(t) + len(ctx.split.task_classes[t]))) for t in seen]
    losses = ctx.method.align(net, session, stats, task_labels, _generator(ctx.seed, session, "align"), ctx.device)
    ctx.run_dir.save_tensors(f"session_{session:03d}/aligned_heads.safetensors", net.adapter_state([], list(net.heads.heads)))
    return {"metrics": {"align/final_loss": losses[-1]} if losses else {}, "losses": losses}


def _accuracy(net: ContinualViT, loader, ctx: StageContext) -> tuple[float, int]:
    preds, labels = predict(net, loader, ctx.device, ctx.cfg.train.precision)
    n = int(labels.numel())
    return (float((preds == labels).float().mean()) if n else math.nan), n


def _branch_probes(ctx: StageContext, net: ContinualViT, session: int) -> dict[str, torch.nn.Module]:
    """Per layer, the change of the session's branch over the session."""
    name = ctx.method.branch_name(session)
    before: dict[str, LoRABranch] = {}
    if session > 0 and name in ctx.method.trained_branches(range(session)):
        state = ctx.run_dir.load_tensors(f"session_{_last_session_with(ctx, name, session):03d}/adapter.safetensors")
        for layer_name, layer in net.lora_layers.items():
            prefix = f"lora.{layer_name}.{name}."
            tensors = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            branch = LoRABranch(tensors["down"], layer.attn_dim)
            branch.load_state_dict(tensors)
            before[layer_name] = branch
    return {
        layer_name: BranchChange(layer.branches[name], before.get(layer_name))  # type: ignore[arg-type]
        for layer_name, layer in net.lora_layers.items()
    }


def _last_session_with(ctx: StageContext, branch: str, session: int) -> int:
    return max(s for s in range(session) if ctx.method.branch_name(s) == branch)


def eval_stage(ctx: StageContext, session: int) -> dict[str, Any]:
    net = ctx.build_net(session + 1)
    seen = [t for s in range(session + 1) for t in ctx.session_tasks(s)]
    test, val, counts = {}, {}, {}
    for t in seen:
        test[t], counts[t] = _accuracy(net, ctx.eval_loader(t, "test"), ctx)
        if ctx.split.val[t]:
            val[t], _ = _accuracy(net, ctx.eval_loader(t, "val"), ctx)
    metrics: dict[str, float] = {}
    old_tasks = [t for s in range(session) for t in ctx.session_tasks(s)]
    if old_tasks:
        probes = _branch_probes(ctx, net, session)
        new_sq = sum(probe_sq_norm(net, probes, ctx.eval_loader(t, "test"), ctx.device) for t in ctx.session_tasks(session))
        old_sq = sum(probe_sq_norm(net, probes, ctx.eval_loader(t, "test"), ctx.device) for t in old_tasks)
        new_sq /= len(ctx.session_tasks(session))
        old_sq /= len(old_tasks)
        metrics["interference/ratio"] = math.sqrt(old_sq / new_sq) if new_sq > 0 else math.nan
    return {"test": test, "val": val, "test_counts": counts, "metrics": metrics}


STAGE_FUNCTIONS: dict[str, Callable[[StageContext, int], dict[str, Any]]] = {
    "split": split_stage,
    "design": design_stage,
    "train": train_stage,
    "update": update_stage,
    "align": align_stage,
    "eval": eval_stage,
}


def run_stage(spec: RunSpec, key: StageKey, *_upstream: Any) -> dict[str, Any]:
    """Run one stage if its marker is absent; return its recorded result.

    ``_upstream`` receives the results of the stages this one depends on; the
    scheduler passes them only to order the work.
    """
    run_dir = RunDir(spec.run_dir)
    if run_dir.is_done(key):
        return run_dir.read_done(key)
    run_dir.log_event(key, "start")
    started = time.perf_counter()
    ctx = StageContext(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stage_seed(spec.seed, key.session, f"global/{key.stage}"))
        info = STAGE_FUNCTIONS[key.stage](ctx, key.session)
    info["wall_time_s"] = time.perf_counter() - started
    info["device"] = str(ctx.device)
    run_dir.mark_done(key, info)
    run_dir.log_event(key, "finish", wall_time_s=info["wall_time_s"])
    return info


def init_run_dir(spec: RunSpec, versions: dict[str, str]) -> RunDir:
    """Create the run directory, or check an existing one belongs to this config and seed."""
    run_dir = RunDir(spec.run_dir)
    record = {"config": config_to_dict(spec.config), "seed": spec.seed, "result_key": spec.config.result_key(), "versions": versions}
    existing = run_dir.file("run.json")
    if existing.is_file():
        old = run_dir.read_json("run.json")
        if old.get("result_key") != record["result_key"] or old.get("seed") != spec.seed:
            raise RunStateError(
                f"{run_dir.path} holds a run of another configuration or seed "
                f"(result key {old.get('result_key')}, seed {old.get('seed')}); choose another output_dir or name"
            )
        return run_dir
    Path(run_dir.path).mkdir(parents=True, exist_ok=True)
    run_dir.write_json("run.json", record)
    return run_dir
