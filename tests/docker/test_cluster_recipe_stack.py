"""docs/cluster.md's cluster recipe as written, across containers of the compose stack's image.

The one-machine test (``tests/docs/test_cluster_recipe.py``) can run neither the
worker line nor the line by which a driver off the cluster joins it. Here each part
of the page's bash block runs where the page says, in a shell of its own
(``docker exec … bash -euo pipefail``) with the "on every node and in the driver's
shell" exports in front:

- the token, the exports and the head line in container ``head``;
- the exports and the worker line in container ``worker``;
- the exports and the join line, then the exports and the driver's lines, in
  container ``driver`` (not a node until it joins).

``<head-ip>`` is the head container's name on the stack's network. ``/shared`` is not
substituted: it is one named volume that every container mounts at /shared, holding
the token, the tiny config that stands for the paper config (as in the one-machine
test), the tiny checkpoint at the documented path, the documented ``data.root`` and
the run directories. The MLflow server is the stack's own ``mlflow`` service (on
PostgreSQL), so the driver's ``MLFLOW_TRACKING_URI`` line runs with only
``<mlflow-host>`` → ``mlflow``, over HTTP as on a real cluster; a sqlite file on
/shared would have left that line's URL untested.

Beyond the run itself: the cluster holds the three nodes (head and worker with CPUs,
the driver's without), the run's stages ran on the head or the worker, and a client
without the token is refused, so a recipe that turned token authentication off
everywhere (no ``RAY_AUTH_MODE`` export at all) fails as well as one that sets it on
one side only. Every container and volume made here carries the label
:data:`LABEL` and goes at the end (and at the start, if an aborted run left any),
then ``down -v`` removes the mlflow service, its database and the network.

The image is the one the stack test builds (``build ray-head``: seconds once its
layers are cached).
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cluster_recipe import PAPER_CONFIG, SHARED, fill_shared, recipe_parts
from stack_helpers import Stack, docker_engine, free_port, mlflow_client, wait_for

pytestmark = pytest.mark.stack

PROJECT = "inflora-recipe-test"
LABEL = "inflora.test=cluster-recipe"
VOLUME = f"{PROJECT}-shared"
CONFIG = f"{SHARED}/tiny.yaml"
ROLES = ("head", "worker", "driver")
RAY_START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 900
AUTH_REFUSED = "AuthenticationError"


def _container(role: str) -> str:
    return f"{PROJECT}-{role}"


def _remove_mine(stack: Stack) -> None:
    """Remove the containers and volumes this test labelled (they are not the compose project's)."""
    if ids := stack.docker("ps", "-aq", "--filter", f"label={LABEL}").split():
        stack.docker("rm", "-f", "-v", *ids)
    if volumes := stack.docker("volume", "ls", "-q", "--filter", f"label={LABEL}").split():
        stack.docker("volume", "rm", *volumes)


@pytest.fixture
def recipe_stack():
    """The engine, the stack's image and an empty project; afterwards nothing of this test is left."""
    started = time.monotonic()
    with docker_engine() as env:
        port = free_port()
        stack = Stack({**env, "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1"}, port, PROJECT)
        _remove_mine(stack)
        stack.compose("down", "-v", "--remove-orphans", check=False)
        try:
            stack.compose("build", "ray-head", timeout=1200)
            stack.timings["engine_and_build_s"] = time.monotonic() - started
            yield stack
        finally:
            _remove_mine(stack)  # before `down`: the network goes only when no container is on it
            stack.compose("down", "-v", "--remove-orphans", check=False, timeout=300)
            stack.timings["total_s"] = time.monotonic() - started
            print(f"\ncluster recipe test timings (s): {json.dumps({k: round(v, 1) for k, v in stack.timings.items()})}")


def _tar(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(directory.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def _bash(stack: Stack, role: str, script: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``script`` in the role's container as the image's user."""
    done = subprocess.run(["docker", "exec", _container(role), "bash", "-euo", "pipefail", "-c", script],
                          env=stack.env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"in {role} ({done.returncode}):\n{script}\n--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-3000:]}"
    return done


def _mlflow_answers(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        return response.status == 200


def test_the_documented_recipe_runs_across_containers(recipe_stack, request, tmp_path):
    stack = recipe_stack
    tiny_checkpoint = request.getfixturevalue("tiny_checkpoint")  # pretrained only once the engine is up, not to skip
    head = _container("head")
    parts = recipe_parts({"<head-ip>": head, "<mlflow-host>": "mlflow", PAPER_CONFIG: CONFIG})
    shared = tmp_path / "shared"
    shared.mkdir()
    checkpoint = fill_shared(shared, tiny_checkpoint, shared / Path(CONFIG).name, shared_as=SHARED)
    image = stack.image("ray-head")

    # /shared: a fresh volume is root's; fill it and give it to the image's user (who runs every line)
    stack.docker("volume", "create", "--label", LABEL, VOLUME)
    stack.docker("run", "--rm", "-i", "--label", LABEL, "--user", "0", "-v", f"{VOLUME}:{SHARED}", image,
                 "sh", "-c", f"tar -x -C {SHARED} && chown -R inflora:inflora {SHARED}", stdin=_tar(shared))
    stack.compose("up", "--no-start", "mlflow")
    (mlflow_id,) = stack.containers("mlflow")
    (network,) = json.loads(stack.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", mlflow_id))
    with ThreadPoolExecutor(max_workers=3) as pool:
        mlflow_up = pool.submit(stack.compose, "up", "-d", "mlflow")  # PostgreSQL and MLflow boot meanwhile
        for role in ROLES:
            stack.docker("run", "-d", "--name", _container(role), "--label", LABEL, "--network", network, "--init",
                         "-v", f"{VOLUME}:{SHARED}", image, "sleep", "infinity")
        t = time.monotonic()
        _bash(stack, "head", "\n".join(parts[p] for p in ("token", "env", "head")), RAY_START_TIMEOUT_S)
        joined = [pool.submit(_bash, stack, role, f"{parts['env']}\n{parts[part]}", RAY_START_TIMEOUT_S)
                  for role, part in (("worker", "worker"), ("driver", "join"))]
        for future in joined:
            future.result()
        stack.timings["ray_nodes_s"] = time.monotonic() - t
        mlflow_up.result()
    wait_for(lambda: _mlflow_answers(stack.url), 300, "the mlflow service")

    t = time.monotonic()
    driven = _bash(stack, "driver", f"{parts['env']}\n{parts['driver']}\nprintf 'RUNS %s\\n' \"$(ls {SHARED}/runs)\"", RUN_TIMEOUT_S).stdout
    stack.timings["run_s"] = time.monotonic() - t
    assert "tiny/inflora/seed0: test accuracy" in driven, driven[-4000:]
    assert "RUNS tiny-inflora-seed0-" in driven  # output_dir=/shared/runs
    run_json = json.loads(_bash(stack, "worker", f"cat {SHARED}/runs/*/run.json", 60).stdout)
    assert run_json["config"]["backbone"]["checkpoint"] == checkpoint
    assert _bash(stack, "worker", f"stat -c %a {SHARED}/ray/token", 60).stdout.strip() == "600"

    # the cluster: head and worker offer CPUs, the driver's node none; the stages ran on the first two
    nodes = ("import json, ray; ray.init(address='{}:6379', log_to_driver=False); "
             "print(json.dumps({{n['NodeID']: n['Resources'].get('CPU', 0) for n in ray.nodes() if n['Alive']}}))").format(head)
    cpus = json.loads(_bash(stack, "driver", f"{parts['env']}\npython -c \"{nodes}\"", 120).stdout.strip().splitlines()[-1])
    assert sorted(n_cpus > 0 for n_cpus in cpus.values()) == [False, True, True], cpus
    client = mlflow_client(stack.url)
    (run,) = client.search_runs([client.get_experiment_by_name("recipe").experiment_id])
    assert run.info.status == "FINISHED" and "final/final_acc_task_mean" in run.data.metrics
    assert set(json.loads(run.data.tags["nodes"])) <= {node for node, n_cpus in cpus.items() if n_cpus > 0}

    # a client without the token is refused: the recipe's cluster authenticates
    refused = _bash(stack, "driver", f"ray status --address={head}:6379", 120, check=False)
    assert refused.returncode != 0 and AUTH_REFUSED in refused.stdout + refused.stderr, (refused.stdout[-2000:], refused.stderr[-2000:])
