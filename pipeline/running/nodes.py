"""Which Ray node a stage ran on (recorded in its result, logged by the tracker).

Ray is not imported here: a stage running in a Ray worker has it imported and
initialised already, and a stage of the in-process executor has no node.
"""

from __future__ import annotations

import sys

__all__ = ["current_node_id"]


def current_node_id() -> str | None:
    """The hex id of the Ray node this process runs on, or ``None`` outside Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()
