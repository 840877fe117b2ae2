"""Typed results of a step, as stored in its marker and read everywhere.

A step returns a :class:`StepResult`; the pipeline stores ``to_dict()`` in the
step's ``*.done.json`` marker and every reader — tracking, reports, sweeps —
gets it back through :meth:`StepResult.from_dict`, so nobody re-parses JSON
keys by hand.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["EvalRow", "StepResult"]


@dataclass(frozen=True)
class EvalRow:
    """Accuracy on one seen task after a session.

    Args:
        task: the task index.
        test: class-incremental test accuracy in [0, 1] (NaN with no test sample).
        count: test samples.
        val: validation accuracy, ``None`` when the task has no validation split.
        extra: further per-task measures (``task_incremental``, ``task_id``…).
    """

    task: int
    test: float
    count: int
    val: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


@dataclass
class StepResult:
    """What a step reports.

    Args:
        metrics: scalars logged at step = session (``memory/rank_mean``…).
        epochs: per-epoch records of a training step (``epoch``, ``loss``, ``train_accuracy``).
        eval: one row per seen task, for evaluation steps.
        info: other JSON-serialisable facts (the split's class order…).
        trainable_parameters: parameters trained in the step.
        wall_time_s, device, node_id: filled in by the runner.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    eval: list[EvalRow] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    trainable_parameters: int | None = None
    wall_time_s: float | None = None
    device: str | None = None
    node_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.eval is not None:
            out["eval"] = [{**asdict(r), "test": _finite_or_none(r.test)} for r in self.eval]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StepResult":
        known = {k: data[k] for k in ("metrics", "epochs", "info", "trainable_parameters", "wall_time_s", "device", "node_id") if k in data}
        rows = data.get("eval")
        if rows is not None:
            known["eval"] = [
                EvalRow(
                    task=int(r["task"]),
                    test=math.nan if r["test"] is None else float(r["test"]),
                    count=int(r["count"]),
                    val=None if r.get("val") is None else float(r["val"]),
                    extra={k: float(v) for k, v in (r.get("extra") or {}).items()},
                )
                for r in rows
            ]
        return cls(**known)

    # -------------------------------------------------------------- views
    def test_row(self) -> dict[int, float]:
        return {r.task: r.test for r in self.eval or []}

    def val_row(self) -> dict[int, float]:
        return {r.task: r.val for r in self.eval or [] if r.val is not None}

    def counts(self) -> dict[int, int]:
        return {r.task: r.count for r in self.eval or []}
