"""Refuse, before anything is submitted, a resource request no Ray node can meet.

Ray queues a task whose request fits no node and only prints, over and over,
``No available node types can fulfill resource request``: the command hangs.
A stage needs all of its CPUs and GPUs on one node, so the request is compared
with each alive node's total resources (``ray.nodes()``), not the cluster's sum.
An autoscaling cluster may add a node later: ``resources.wait_for_resources_s``
bounds how long to wait for one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..config import ResourcesConfig

__all__ = ["ResourceError", "stage_request", "unmet_request", "check_cluster_fits", "ray_node_resources", "ensure_executor_fits"]

_logger = logging.getLogger(__name__)

_KEYS = {"CPU": "resources.cpus_per_stage", "GPU": "resources.gpus_per_stage"}
_EPS = 1e-9


class ResourceError(RuntimeError):
    """A stage's resource request fits no node of the cluster."""


def stage_request(resources: ResourcesConfig) -> dict[str, float]:
    """What one computing stage asks one node for (the split stage asks for less)."""
    request = {"CPU": float(resources.cpus_per_stage)}
    if resources.gpus_per_stage > 0:
        request["GPU"] = float(resources.gpus_per_stage)
    return request


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{values.get(k, 0.0):g} {k}" for k in ("CPU", "GPU"))


def unmet_request(request: dict[str, float], nodes: Sequence[dict[str, float]]) -> str | None:
    """``None`` if some node holds every resource of ``request``, else a one-line reason.

    The reason names the config key(s) of the resources no node can give with the
    rest of the request, the request, and what the nodes have.
    """
    if any(all(node.get(k, 0.0) + _EPS >= v for k, v in request.items()) for node in nodes):
        return None
    alone = [k for k, v in request.items() if not any(node.get(k, 0.0) + _EPS >= v for node in nodes)]
    short = alone or list(request)  # each fits some node, but no node has them together
    keys = " and ".join(f"{_KEYS.get(k, k)}={request[k]:g}" for k in short)
    totals = {k: sum(node.get(k, 0.0) for node in nodes) for k in ("CPU", "GPU")}
    per_node = "; ".join(_fmt(node) for node in nodes[:4]) + ("; …" if len(nodes) > 4 else "")
    return (
        f"{keys}: no node of the Ray cluster can run a stage asking for {_fmt(request)} "
        f"(the cluster has {_fmt(totals)} in {len(nodes)} node(s): {per_node or 'none'}); "
        f"lower {' and '.join(_KEYS.get(k, k) for k in short)}, or add such a node "
        "(resources.wait_for_resources_s waits for an autoscaler)"
    )


def ray_node_resources() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected Ray cluster."""
    import ray

    return [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]


def check_cluster_fits(
    requests: Iterable[ResourcesConfig],
    wait_s: float = 0.0,
    nodes: Callable[[], list[dict[str, float]]] = ray_node_resources,
    poll_s: float = 2.0,
) -> None:
    """Raise :class:`ResourceError` unless every request fits some node, waiting up to ``wait_s``.

    Args:
        requests: the resources sections of the runs to submit.
        wait_s: how long to wait for a node that fits (autoscaling clusters).
        nodes: the nodes' total resources (Ray's by default).
        poll_s: seconds between looks at the cluster while waiting.
    """
    unique = {tuple(sorted(stage_request(r).items())): stage_request(r) for r in requests}
    deadline = time.monotonic() + wait_s
    while True:
        current = nodes()
        reasons = [reason for request in unique.values() if (reason := unmet_request(request, current))]
        if not reasons:
            return
        if time.monotonic() >= deadline:
            waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
            raise ResourceError(reasons[0] + waited)
        _logger.warning("waiting for the cluster to grow: %s", reasons[0])
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def ensure_executor_fits(executor: Any, requests: Sequence[ResourcesConfig]) -> None:
    """The check for a Ray executor (stages of other executors run in this process)."""
    from .scheduler import RayExecutor

    if isinstance(executor, RayExecutor) and requests:
        check_cluster_fits(requests, max(r.wait_for_resources_s for r in requests))
