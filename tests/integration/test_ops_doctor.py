"""`darkroom-ops doctor` (the installed console script) on a real deployment's
parts: RabbitMQ and its management API, one PostgreSQL database per service
(migrated by the services' own migrations), the fs object store and the file
mail backend, configured through the environment as deploy/config/*.yaml
reads it.

- healthy: exit 0; development secrets are warnings, not failures;
- a DATABASE_URL naming a database that does not exist: exit 1, and the fix
  names the variable and how to create the database;
- a database behind its migrations: exit 1, and the fix names the command;
- production mode with development secrets: exit 1, the variables named.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from ops.doctor import SERVICES
from services.common.migrations import SERVICES_DIR, upgrade
from tests.conftest import REPO, base_env

pytestmark = pytest.mark.integration

OPS = str(Path(sys.executable).parent / "darkroom-ops")


def doctor(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([OPS, "doctor", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def healthy_env(make_vhost, make_database, rabbit_server, tmp_path_factory):
    amqp_uri, _ = make_vhost("ops-doctor")
    root = tmp_path_factory.mktemp("doctor")
    (root / "objects").mkdir()
    (root / "mail").mkdir()
    databases = {}
    for name in SERVICES:
        databases[f"{name.upper()}_DATABASE_URL"] = url = make_database(f"doctor_{name}")
        upgrade(SERVICES_DIR / name / "migrations", url)
    env = base_env(AMQP_URI=amqp_uri, RABBIT_MANAGEMENT_URL=rabbit_server[1],
                   STORAGE_BACKEND="fs", STORAGE_FS_ROOT=str(root / "objects"),
                   MAIL_URL=f"file://{root / 'mail'}", **databases)
    env.pop("DARKROOM_ENV", None)
    env.pop("DARKROOM_CONFIG_DIR", None)
    return env


def findings(result: subprocess.CompletedProcess) -> dict[tuple[str, str], dict]:
    return {(f["group"], f["check"]): f for f in json.loads(result.stdout)["findings"]}


def test_a_healthy_deployment_passes(healthy_env):
    result = doctor(healthy_env, "--json")
    assert result.returncode == 0, result.stdout
    found = findings(result)
    assert not [f for f in found.values() if f["status"] == "fail"]
    for name in SERVICES:
        assert found[(name, "database")]["status"] == "ok"
        assert found[(name, "migrations")]["status"] == "ok"
        settings = [f for (group, check), f in found.items()
                    if group == name and check.startswith("settings")]
        assert settings and all(f["status"] == "ok" for f in settings)
    assert found[("rabbitmq", "management API")]["status"] == "ok"
    assert found[("rabbitmq", "broker (ops)")]["status"] == "ok"
    assert found[("storage", "object store")]["status"] == "ok"
    assert found[("notifications", "mail server")]["status"] == "ok"
    # the development defaults are fine on a laptop: a warning with the fix
    assert found[("auth", "secrets")]["status"] == "warn"
    assert "MAIL_SECRETS_KEY" in found[("auth", "secrets")]["detail"]
    text = doctor(healthy_env)
    assert text.returncode == 0
    assert text.stdout.splitlines()[-1].startswith("all checks passed")


def test_a_wrong_database_url_fails_and_names_the_fix(healthy_env):
    missing = make_url(healthy_env["AUTH_DATABASE_URL"]).set(database="dr_no_such_database")
    env = {**healthy_env, "AUTH_DATABASE_URL": missing.render_as_string(hide_password=False)}
    result = doctor(env)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    [at] = [i for i, line in enumerate(lines) if line.startswith("FAIL  auth: database")]
    assert "dr_no_such_database" in lines[at]
    assert lines[at + 1].strip().startswith("fix: check AUTH_DATABASE_URL")
    assert "createdb" in lines[at + 1] and "dr_no_such_database" in lines[at + 1]
    assert lines[-1] == "1 problem found, " + lines[-1].split(", ", 1)[1]
    assert "Traceback" not in result.stderr
    # the other services are still checked
    assert any(line.startswith("ok    billing: migrations") for line in lines)


def test_a_database_behind_its_migrations_fails_with_the_command(healthy_env, make_database):
    env = {**healthy_env, "BILLING_DATABASE_URL": make_database("doctor_unmigrated")}
    result = doctor(env, "--only", "billing", "--json")
    assert result.returncode == 1
    found = findings(result)
    assert found[("billing", "database")]["status"] == "ok"
    migrations = found[("billing", "migrations")]
    assert migrations["status"] == "fail" and "no revision" in migrations["detail"]
    assert "python -m services.common.migrations billing" in migrations["fix"]
    assert {group for group, _ in found} == {"billing"}  # --only


def test_production_mode_refuses_development_secrets(healthy_env):
    result = doctor({**healthy_env, "DARKROOM_ENV": "production"}, "--only", "auth", "--json")
    assert result.returncode == 1
    secrets = findings(result)[("auth", "secrets")]
    assert secrets["status"] == "fail"
    assert "MAIL_SECRETS_KEY" in secrets["detail"] and "AMQP_URI" in secrets["detail"]
    assert "dev-only" not in secrets["detail"]  # names, never values
    assert "deploy/.env.example" in secrets["fix"]
