"""docker/compose.yaml and its GPU override, as ``docker-compose config`` resolves them.

No docker engine is needed: ``config`` validates the files against the Compose
schema and prints the merged result, which the tests read. Without docker-compose
the tests skip, unless ``INFLORA_CI`` is set (CI installs it): then they fail.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
GPU = DOCKER / "compose.gpu.yaml"
DOCKERFILE = DOCKER / "Dockerfile"

SERVICES = {"postgres", "mlflow", "ray-token", "ray-head", "ray-worker", "runner"}
RAY_NODES = ("ray-head", "ray-worker", "runner")  # the runner joins as a node without resources
# Variables the compose files interpolate: the tests run with none of them set.
_COMPOSE_VARS = ("INFLORA_IMAGE_TAG", "TORCH_INDEX_URL", "POSTGRES_PASSWORD", "MLFLOW_PORT", "MLFLOW_WORKERS",
                 "RAY_HEAD_CPUS", "RAY_WORKER_CPUS", "GPUS_PER_STAGE")  # fmt: skip


def _compose_command() -> list[str] | None:
    if found := shutil.which("docker-compose"):
        return [found]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


@pytest.fixture(scope="module")
def compose_cmd() -> list[str]:
    cmd = _compose_command()
    if cmd is None:
        if "INFLORA_CI" in os.environ:
            pytest.fail("docker-compose is not installed, and INFLORA_CI is set: CI must install it (apt-get install -y docker-compose)")
        pytest.skip("docker-compose is not installed (set INFLORA_CI=1 to make this a failure)")
    return cmd


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory) -> Path:
    """Stands in for docker/.env, so a developer's settings do not change the result."""
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


def run_config(compose_cmd: list[str], env_file: Path, *files: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in _COMPOSE_VARS and not k.startswith("COMPOSE_")}
    full_env.update(env)
    args = [*compose_cmd, "--env-file", str(env_file)]
    for path in files:
        args += ["-f", str(path)]
    return subprocess.run([*args, "config"], capture_output=True, text=True, env=full_env, timeout=60)


def load_config(compose_cmd: list[str], env_file: Path, *files: Path, **env: str) -> dict[str, Any]:
    result = run_config(compose_cmd, env_file, *files, **env)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config(compose_cmd, empty_env_file) -> dict[str, Any]:
    return load_config(compose_cmd, empty_env_file, COMPOSE)


@pytest.fixture(scope="module")
def gpu_config(compose_cmd, empty_env_file) -> dict[str, Any]:
    return load_config(compose_cmd, empty_env_file, COMPOSE, GPU)


# ------------------------------------------------- normalising v1 and v2 output
def ports(service: dict[str, Any]) -> list[tuple[str | None, str, str]]:
    """(host IP, published port, container port) of each published port."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # docker compose v2: long syntax
            out.append((port.get("host_ip"), str(port.get("published")), str(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            out.append((None, parts[0], parts[1]))
        else:
            out.append((None, "", parts[0]))
    return out


def volumes(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Mount target -> (source, read only)."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):  # docker compose v2: long syntax
            out[volume["target"]] = (volume.get("source"), bool(volume.get("read_only", False)))
            continue
        source, target, *mode = str(volume).split(":")
        out[target] = (source, "ro" in (mode[0].split(",") if mode else []))
    return out


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def option(cmd: list[str], name: str) -> str | None:
    """Value of ``--name value`` or ``--name=value`` in a command."""
    for i, arg in enumerate(cmd):
        if arg == name and i + 1 < len(cmd):
            return cmd[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service.get("healthcheck", {}).get("test", [])
    return " ".join(test) if isinstance(test, list) else str(test)


def depends(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


# ------------------------------------------------------------------------ tests
def test_services(config):
    assert set(config["services"]) == SERVICES
    assert set(config["volumes"]) >= {"pgdata", "mlartifacts", "ray-auth", "runs", "checkpoints"}


def test_healthchecks_and_start_order(config):
    services = config["services"]
    assert "pg_isready" in healthcheck_text(services["postgres"])
    assert "/health" in healthcheck_text(services["mlflow"])
    assert "ray health-check" in healthcheck_text(services["ray-head"])
    assert depends(services["mlflow"]) == {"postgres": "service_healthy"}
    assert depends(services["ray-head"]) == {"ray-token": "service_completed_successfully"}
    assert depends(services["ray-worker"]) == {"ray-head": "service_healthy"}
    assert depends(services["runner"]) == {"mlflow": "service_healthy", "ray-head": "service_healthy", "ray-worker": "service_started"}


@pytest.mark.parametrize("env", [{}, {"MLFLOW_PORT": "5099"}], ids=["default", "MLFLOW_PORT"])
def test_only_mlflow_is_published_on_localhost(compose_cmd, empty_env_file, env):
    services = load_config(compose_cmd, empty_env_file, COMPOSE, **env)["services"]
    for name, service in services.items():
        for host_ip, _, _ in ports(service):
            assert host_ip == "127.0.0.1", f"{name} publishes a port on {host_ip or 'every interface'}"
    published = {name: ports(s) for name, s in services.items() if ports(s)}
    assert published == {"mlflow": [("127.0.0.1", env.get("MLFLOW_PORT", "5000"), "5000")]}


def test_workers_are_scalable(config):
    worker = config["services"]["ray-worker"]
    assert "container_name" not in worker and not ports(worker)
    cmd = command(worker)
    assert cmd[:2] == ["ray", "start"] and "--block" in cmd
    assert option(cmd, "--address") == "ray-head:6379"


def test_ray_head_without_public_dashboard(config):
    head = config["services"]["ray-head"]
    cmd = command(head)
    assert cmd[:3] == ["ray", "start", "--head"] and "--block" in cmd
    assert option(cmd, "--port") == "6379"
    dashboard = option(cmd, "--include-dashboard")
    assert dashboard == "false" or option(cmd, "--dashboard-host") in (None, "127.0.0.1")
    assert not ports(head)


def test_ray_token_auth_everywhere(config):
    services = config["services"]
    token_path = environment(services["ray-token"])["RAY_AUTH_TOKEN_PATH"]
    token_dir = str(Path(token_path).parent)
    assert volumes(services["ray-token"])[token_dir][1] is False  # it writes the token
    for name in RAY_NODES:
        env = environment(services[name])
        assert env.get("RAY_AUTH_MODE") == "token", name
        assert env.get("RAY_AUTH_TOKEN_PATH") == token_path, name
        assert "RAY_AUTH_TOKEN" not in env, f"{name}: the token belongs in the volume, not the environment"
        source, read_only = volumes(services[name])[token_dir]
        assert source == volumes(services["ray-token"])[token_dir][0] and read_only, name


def test_run_dirs_and_checkpoint_shared(config):
    services = config["services"]
    mounts = {name: volumes(services[name]) for name in RAY_NODES}
    for target in ("/app/runs", "/app/checkpoints"):
        sources = {name: m.get(target) for name, m in mounts.items()}
        assert all(sources.values()), f"{target} is not mounted in {[n for n, s in sources.items() if not s]}"
        assert len({source for source, _ in sources.values()}) == 1, f"{target} differs: {sources}"
        assert not any(read_only for _, read_only in sources.values())
        assert sources["runner"][0] in config["volumes"], f"{target} should be a named volume"


def test_runner(config):
    runner = config["services"]["runner"]
    env = environment(runner)
    assert env["RAY_ADDRESS"] == "ray-head:6379"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert command(runner)[:3] == ["inflora", "run", "configs/demo.yaml"]
    assert runner.get("working_dir") == "/app"  # the config's relative paths land on the shared volumes
    entrypoint = runner.get("entrypoint")
    assert (entrypoint if isinstance(entrypoint, list) else [entrypoint]) == ["ray-driver.sh"]
    assert runner.get("stop_signal") == "SIGINT"  # `inflora run` marks its MLflow runs KILLED


def test_mlflow_server(config):
    mlflow = config["services"]["mlflow"]
    cmd = command(mlflow)
    assert cmd[:2] == ["mlflow", "server"]
    store = option(cmd, "--backend-store-uri")
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3: name the driver.
    assert re.match(r"postgresql\+(psycopg|psycopg2)://[^@]+@postgres:5432/", store), store
    assert "--serve-artifacts" in cmd
    assert volumes(mlflow)[option(cmd, "--artifacts-destination")][0] == "mlartifacts"
    assert option(cmd, "--host") == "0.0.0.0" and option(cmd, "--port") == "5000"
    assert {"mlflow:*", "localhost:*", "127.0.0.1:*"} <= set(option(cmd, "--allowed-hosts").split(","))
    assert environment(mlflow)["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert volumes(config["services"]["postgres"])["/var/lib/postgresql/data"][0] == "pgdata"


def test_gpu_override(config, gpu_config):
    services = gpu_config["services"]
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert [d["driver"] for d in devices] == ["nvidia"]
    assert "gpu" in devices[0]["capabilities"]
    assert services["ray-worker"]["build"]["args"]["TORCH_INDEX_URL"] == ""  # PyPI's CUDA wheels
    assert services["ray-worker"]["image"] != services["runner"]["image"]
    assert "resources.gpus_per_stage=1" in command(services["runner"])
    for name in SERVICES - {"ray-worker"}:
        assert "deploy" not in services[name], name
    # The override changes nothing else about the workers.
    assert command(services["ray-worker"]) == command(config["services"]["ray-worker"])
    assert volumes(services["ray-worker"]) == volumes(config["services"]["ray-worker"])


def test_config_rejects_a_broken_file(compose_cmd, empty_env_file, tmp_path):
    """The validation above can fail: an unknown key is an error."""
    broken = tmp_path / "compose.yaml"
    data = yaml.safe_load(COMPOSE.read_text())
    data["services"]["runner"]["not_a_compose_key"] = True
    broken.write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_config(compose_cmd, empty_env_file, broken)
    assert result.returncode != 0
    assert "not_a_compose_key" in result.stderr


def test_dockerfile():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^ARG TORCH_VERSION=2\.14\.1$", text, re.M)
    assert re.search(r"^ARG TORCHVISION_VERSION=0\.29\.1$", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    # Every path the Dockerfile copies exists (globs aside) relative to the build context.
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M):
        *sources, _ = [part for part in line.split() if not part.startswith("--")]
        for source in sources:
            if not any(ch in source for ch in "*?["):
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


# ------------------------------------------------ nits found on a real engine
def _shm_bytes(value) -> int:
    """Bytes of a compose size (``2gb``, ``1g``, ``512m``, a plain number)."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)b?", str(value).strip().lower())
    assert found, value
    return int(float(found.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[found.group(2)])


@pytest.mark.parametrize(("value", "expected"), [(None, "https://download.pytorch.org/whl/cpu"), ("", ""),
                                                 ("https://example.invalid/simple", "https://example.invalid/simple")],
                         ids=["unset", "empty", "set"])
def test_torch_index_url_empty_reaches_the_dockerfile(compose_cmd, empty_env_file, value, expected):
    """``${VAR-default}``: only an unset variable takes the CPU index; empty means PyPI (the Dockerfile's rule)."""
    env = {} if value is None else {"TORCH_INDEX_URL": value}
    services = load_config(compose_cmd, empty_env_file, COMPOSE, **env)["services"]
    built = {name: s["build"]["args"]["TORCH_INDEX_URL"] for name, s in services.items() if "build" in s}
    assert built and set(built.values()) == {expected}, built


def test_two_workers_by_default(config, compose_cmd, empty_env_file):
    """``up runner`` (which applies the file's scale) keeps two workers; RAY_WORKERS changes it."""
    assert int(config["services"]["ray-worker"]["scale"]) == 2
    assert int(load_config(compose_cmd, empty_env_file, COMPOSE, RAY_WORKERS="3")["services"]["ray-worker"]["scale"]) == 3


def test_object_store_fits_in_shm(config):
    """Ray's default object store (30 % of RAM) exceeds shm_size and falls back to /tmp: each node sets a smaller one."""
    services = config["services"]
    for name in ("ray-head", "ray-worker"):
        store = option(command(services[name]), "--object-store-memory")
        assert store is not None, name
        assert int(store) < _shm_bytes(services[name]["shm_size"]), name
    driver = (DOCKER / "ray-driver.sh").read_text()
    found = re.search(r'--object-store-memory="\$\{RAY_DRIVER_OBJECT_STORE_BYTES:-(\d+)\}"', driver)
    assert found and int(found.group(1)) < _shm_bytes(services["runner"]["shm_size"])


def test_shm_bytes():
    assert _shm_bytes("2gb") == 2 * 2**30 and _shm_bytes("1g") == 2**30 and _shm_bytes(1024) == 1024


def test_legacy_builder_context_excludes_the_venv():
    """The root .dockerignore (what the legacy builder reads) excludes everything but what the image copies."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    reincluded = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    assert not any(fnmatch.fnmatch(name, p) for p in reincluded for name in (".venv", "runs", "checkpoints", "mlflow.db", "mlruns"))
    # docker/README.md: BuildKit's docker/Dockerfile.dockerignore and the legacy builder's root
    # .dockerignore hold "the same list", and "only what the image copies is sent"
    buildkit = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns == buildkit
    assert "the same\n# list" in (DOCKER / "README.md").read_text()
    copied = [src for line in DOCKERFILE.read_text().splitlines() if line.startswith("COPY ")
              for src in line.split()[1:-1] if not src.startswith("--")]
    for src in copied:
        assert any(fnmatch.fnmatch(p, src.rstrip("/")) for p in reincluded), f"the Dockerfile copies {src}, which the context leaves out"
