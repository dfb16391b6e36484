"""Static checks of the deployment files (no Docker engine runs in CI).

The compose file must be valid against the Compose Specification, run the same
commands as `make dev` (deploy/Procfile), point at config files and code that
exist, and only set environment variables that some config actually reads.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
DARKROOM_SERVICES = ["auth", "notifications", "storage", "gateway"]


def procfile() -> dict[str, list[str]]:
    lines = [line for line in (DEPLOY / "Procfile").read_text().splitlines() if line.strip()]
    return {name.strip(): shlex.split(cmd) for name, _, cmd in (line.partition(":") for line in lines)}


def test_compose_file_matches_the_compose_specification():
    schema = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(COMPOSE)


def test_every_procfile_process_runs_in_compose_with_the_same_command():
    processes = procfile()
    assert sorted(processes) == sorted(DARKROOM_SERVICES)
    for name, argv in processes.items():
        assert COMPOSE["services"][name]["command"] == argv, name


@pytest.mark.parametrize("name", DARKROOM_SERVICES)
def test_commands_point_at_existing_config_and_code(name):
    argv = procfile()[name]
    config = argv[argv.index("--config") + 1]
    assert (REPO / config).is_file(), config
    target = argv[-1]
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr)
    if argv[0] == "nameko":
        assert obj.name == name  # the nameko service name is the process name


def referenced_variables() -> set[str]:
    """Environment variables the config files and gunicorn settings read."""
    names: set[str] = set()
    for path in (DEPLOY / "config").iterdir():
        text = path.read_text()
        names |= set(re.findall(r"\$\{([A-Z0-9_]+)", text))
        names |= set(re.findall(r"environ\.get\(['\"]([A-Z0-9_]+)", text))
    return names


@pytest.mark.parametrize("name", DARKROOM_SERVICES + ["ops"])
def test_compose_sets_only_variables_that_are_read(name):
    known = referenced_variables() | {"PROMETHEUS_MULTIPROC_DIR", "LOG_LEVEL"}
    environment = COMPOSE["services"][name].get("environment", {})
    unknown = sorted(set(environment) - known)
    assert not unknown, f"{name} sets variables no config reads: {unknown}"


def test_each_service_database_is_created_by_the_postgres_init_script():
    init = (DEPLOY / "postgres" / "init-databases.sh").read_text()
    for name in ("auth", "notifications", "storage"):
        url = COMPOSE["services"][name]["environment"][f"{name.upper()}_DATABASE_URL"]
        assert url.endswith(f"@postgres:5432/{name}")
        assert re.search(rf"^create {name} ", init, re.M), name
        password_var = f"{name.upper()}_DB_PASSWORD"
        assert password_var in COMPOSE["services"]["postgres"]["environment"]


def test_dockerfile_copies_only_paths_that_exist():
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources = line.split()[1:-1]
            for source in sources:
                assert (REPO / source).exists(), source


def test_env_example_defines_every_required_compose_variable():
    text = (DEPLOY / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = {
        line.split("=", 1)[0]
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert required <= example, sorted(required - example)
