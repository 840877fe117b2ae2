"""docs/cluster.md's cluster recipe, split into the parts the page says run where.

The recipe tests run the page's own lines, so the page cannot drift from what works:
``tests/docs/test_cluster_recipe.py`` on one machine, and
``tests/docker/test_cluster_recipe_stack.py`` across containers (head, worker, driver).
Each part of the recipe's bash block starts with a comment that says where it runs;
:data:`PARTS` maps those comments to roles, so a part that moves or is renamed on the
page fails here with its comment, not somewhere in a shell.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml
from conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cluster.md"
SECTION = "## A Ray cluster by hand"
SHARED = "/shared"
PAPER_CONFIG = "configs/paper/imagenet_r_10.yaml"
# the first comment line of each part → its role
PARTS = {
    "once, on any node": "token",
    "on every node and in the driver's shell": "env",
    "the head node": "head",
    "each worker node": "worker",
    "a driver on a machine that is not a node": "join",
    "the driver": "driver",
}


def recipe_block() -> str:
    """The bash block of the page's by-hand section, as written."""
    section = DOC.read_text().split(SECTION, 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def recipe_parts(replacements: dict[str, str]) -> dict[str, str]:
    """The block's lines by role (``token``, ``env``, ``head``, ``worker``, ``join``, ``driver``).

    Each documented string in ``replacements`` (``<head-ip>``, the paper config, …) is
    replaced by what stands for it here, and must occur in the block. A part is the
    lines after a comment up to the next comment; a comment that follows another one
    continues it.
    """
    block = recipe_block()
    for documented, here in replacements.items():
        assert documented in block, f"{DOC.name}'s recipe no longer says {documented!r}"
        block = block.replace(documented, here)
    parts: dict[str, list[str]] = {}
    role, previous_was_comment = None, False
    for line in block.splitlines():
        if line.startswith("#"):
            if not previous_was_comment:
                heading = line.lstrip("# ")
                role = next((r for start, r in PARTS.items() if heading.startswith(start)), None)
                assert role is not None and role not in parts, f"{DOC.name}: the recipe comment {line!r} names no new part {sorted(PARTS)}"
                parts[role] = []
            previous_was_comment = True
            continue
        previous_was_comment = False
        if line.strip():
            assert role is not None, f"{DOC.name}: the recipe line {line!r} comes before any comment saying where it runs"
            parts[role].append(line)
    assert set(parts) == set(PARTS.values()), f"{DOC.name}: the recipe's parts are {sorted(parts)}, expected {sorted(PARTS.values())}"
    return {role: "\n".join(lines) for role, lines in parts.items()}


def documented_path(key: str) -> str:
    """The path that the recipe's ``--set key=...`` gives (on the shared storage)."""
    found = re.search(rf"--set {re.escape(key)}=(\S+)", recipe_block())
    assert found and found.group(1).startswith(f"{SHARED}/"), f"{DOC.name}'s recipe sets no {key} under {SHARED}"
    return found.group(1)


def fill_shared(shared: Path, tiny_checkpoint: Path, config_path: Path, shared_as: str) -> str:
    """Lay out, under ``shared``, what the recipe expects under /shared.

    The tiny checkpoint goes to the documented ``backbone.checkpoint``, the documented
    ``data.root`` gets a file (the preflight refuses an empty one; the tiny config reads
    the packaged digits), and ``config_path`` gets the tiny config that stands for the
    paper config: the Ray executor, and no tracking URI of its own, so that the recipe's
    ``MLFLOW_TRACKING_URI`` decides where the run is logged; its paths are those where
    the run reads them, under ``shared_as`` (/shared in a container). Returns the
    checkpoint's path as the run reads it.
    """
    in_shared = {key: shared / Path(documented_path(key)).relative_to(SHARED) for key in ("backbone.checkpoint", "data.root")}
    checkpoint = in_shared["backbone.checkpoint"]
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny_checkpoint, checkpoint)
    in_shared["data.root"].mkdir(parents=True, exist_ok=True)
    (in_shared["data.root"] / "README").write_text("the tiny config reads the packaged digits\n")
    seen = Path(shared_as) / checkpoint.relative_to(shared)
    config = tiny_config_dict(Path(shared_as), seen, resources={"executor": "ray", "cpus_per_stage": 1},
                              tracking={"experiment": "recipe", "uri": None})
    config_path.write_text(yaml.safe_dump(config))
    return str(seen)
