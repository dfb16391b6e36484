"""Production mode: no process starts with a secret anyone could know.

The rules on plain config dictionaries first, then the three real start paths
(``nameko run`` through the Procfile command, gunicorn with the gateway, the ops
CLI) as processes. The processes need no broker: they must refuse before they
connect to anything.
"""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.common import secrets
from services.common.config import CONFIG_DIR, load_config
from services.common.keyring import new_key_entry
from services.common.secrets import ConfigurationRefused, insecure_settings, refuse_insecure_config

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
STRONG = "3f9a0c1e7b5d48a2c6e0f1b3d5a7c9e1f2a4b6c8d0e2f4a6"  # what `make up` generates


def config_variables() -> set[str]:
    names: set[str] = set()
    for path in CONFIG_DIR.glob("*.yaml"):
        names |= set(re.findall(r"\$\{([A-Z0-9_]+)", path.read_text()))
    return names


@pytest.fixture
def clean_env(monkeypatch):
    """No variable any config file reads, and no mode: each test sets what it needs."""
    for name in config_variables() | {secrets.ENV_VAR, "DARKROOM_CONFIG_DIR"}:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def production(clean_env):
    clean_env.setenv(secrets.ENV_VAR, "production")
    return clean_env


# ------------------------------------------------------------------ the mode


@pytest.mark.parametrize("value, expected", [
    (None, "development"), ("", "development"), ("development", "development"),
    ("production", "production"), (" Production ", "production"),
])
def test_mode_comes_from_darkroom_env(clean_env, value, expected):
    if value is not None:
        clean_env.setenv(secrets.ENV_VAR, value)
    assert secrets.mode() == expected


@pytest.mark.parametrize("value", ["prod", "staging", "true"])
def test_an_unknown_mode_is_refused_rather_than_treated_as_development(clean_env, value):
    clean_env.setenv(secrets.ENV_VAR, value)
    with pytest.raises(ConfigurationRefused, match="DARKROOM_ENV must be one of"):
        refuse_insecure_config({"AUTH": {"SECRET_KEY": ""}}, "auth")


def test_development_mode_accepts_the_built_in_defaults(clean_env):
    config = load_config(CONFIG_DIR / "auth.yaml")
    assert insecure_settings(config)  # they are weak...
    refuse_insecure_config(config, "auth", CONFIG_DIR / "auth.yaml")  # ...and allowed


# ------------------------------------------------------------------ what is weak


@pytest.mark.parametrize("value, reason", [
    ("", "is empty"),
    (None, "is empty"),
    ("   ", "is empty"),
    ("change-me-auth-secret-key", "value from deploy/.env.example"),
    ("change-me-something-new", "placeholder"),
    ("dev-only-insecure-auth-secret", "development default"),
    ("sk_test_dev_only", "development default"),
    ("minioadmin", "development default"),
    ("Guest", "well-known default credential"),
    (["whsec_" + STRONG, "whsec_dev_only"], "development default"),
    ("whsec_" + STRONG + ",whsec_dev_only", "development default"),
])
def test_weak_secrets_are_named_with_their_reason(value, reason):
    problems = insecure_settings({"AUTH": {"SECRET_KEY": value}})
    assert len(problems) == 1
    assert problems[0].startswith("AUTH.SECRET_KEY ")
    assert reason in problems[0]


@pytest.mark.parametrize("key", ["SECRET_KEY", "URL_SECRET", "S3_ACCESS_KEY", "S3_SECRET_KEY",
                                 "PSEUDONYM_KEY", "STRIPE_WEBHOOK_SECRET", "DB_PASSWORD", "KEY",
                                 "API_TOKEN"])
def test_secret_keys_are_recognised_by_name(key):
    assert insecure_settings({key: ""}) == [f"{key} is empty"]


@pytest.mark.parametrize("key", ["PASSWORD_RESET_TTL_MINUTES", "TOKEN_TTL", "KEYS_PER_USER",
                                 "SECRETARY", "S3_BUCKET"])
def test_other_keys_are_not_secrets(key):
    assert insecure_settings({key: ""}) == []


@pytest.mark.parametrize("enabled, refused", [
    (False, False), ("false", False), ("0", False), (True, True), ("true", True)])
def test_a_section_switched_off_needs_no_secret(enabled, refused):
    config = {"PROVIDERS": {"openai": {"enabled": enabled, "api_key": "", "model": "m"}}}
    assert bool(insecure_settings(config)) is refused


def test_strong_secrets_and_urls_pass():
    config = {
        "AMQP_URI": f"amqp://darkroom:{STRONG}@rabbitmq:5672/",
        "DATABASE_URL": f"postgresql://auth:{STRONG}@postgres:5432/auth",
        "RATELIMIT_STORAGE_URI": "redis://redis:6379/0",  # no password at all: not a secret
        "MAIL": {"URL": "file:///app/var/mail"},
        "AUTH": {"SECRET_KEY": STRONG, "SESSION_TTL_DAYS": 7},
        "PORT": 5672,
    }
    assert insecure_settings(config) == []


@pytest.mark.parametrize("url, reason", [
    ("amqp://guest:guest@127.0.0.1:5672/", "development default"),
    ("amqp://darkroom:change-me-rabbitmq-password@rabbitmq:5672/", "deploy/.env.example"),
    ("amqp://darkroom:@rabbitmq:5672/", "is empty"),
    ("smtp://mailer:change%2Dme%2Dsmtp@mail:587", "placeholder"),  # percent-encoded
    ("http://guest:guest@127.0.0.1:15672", "development default"),
])
def test_the_password_inside_a_url_is_a_secret(url, reason):
    problems = insecure_settings({"MAIL": {"URL": url}})
    assert len(problems) == 1
    assert problems[0].startswith("MAIL.URL: the password in the URL ")
    assert reason in problems[0]


def test_the_refusal_names_variables_never_values(production):
    source = CONFIG_DIR / "storage.yaml"
    config = {
        "AMQP_URI": "amqp://darkroom:change-me-rabbitmq-password@rabbitmq:5672/",
        "STORAGE": {"URL_SECRET": "dev-only-insecure-storage-url-secret",
                    "S3_ACCESS_KEY": "minioadmin", "S3_SECRET_KEY": STRONG},
    }
    with pytest.raises(ConfigurationRefused) as caught:
        refuse_insecure_config(config, "storage", source)
    message = str(caught.value)
    assert message.startswith("storage refuses to start with DARKROOM_ENV=production: ")
    assert "STORAGE_URL_SECRET (STORAGE.URL_SECRET)" in message
    assert "S3_ACCESS_KEY (STORAGE.S3_ACCESS_KEY)" in message
    assert "AMQP_URI: the password in the URL" in message
    assert "S3_SECRET_KEY" not in message
    for value in ("change-me-rabbitmq-password", "dev-only-insecure-storage-url-secret",
                  "minioadmin", STRONG):
        assert value not in message


@pytest.mark.parametrize("ring, reason", [
    ("", "is empty"),
    ("dev-only-insecure:ZGV2LW9ubHktaW5zZWN1cmUtc3RvcmFnZS1rZXktMzI=",
     "still has a built-in development default"),
    ("k2:" + "A" * 43 + "=,dev-only-insecure:ZGV2LW9ubHktaW5zZWN1cmUtc3RvcmFnZS1rZXktMzI=",
     "still has a built-in development default"),  # an old dev key left in the ring
])
def test_a_missing_or_development_key_ring_is_refused_by_name(production, ring, reason):
    config = {"STORAGE": {"URL_SECRET": STRONG, "ENCRYPTION_KEYS": ring,
                          "S3_ACCESS_KEY": STRONG, "S3_SECRET_KEY": STRONG}}
    with pytest.raises(ConfigurationRefused) as caught:
        refuse_insecure_config(config, "storage", CONFIG_DIR / "storage.yaml")
    assert f"STORAGE_ENCRYPTION_KEYS (STORAGE.ENCRYPTION_KEYS) {reason}" in str(caught.value)


# The secrets each process's config file names, all on their built-in defaults
# when nothing is set: production mode must name every one.
EXPECTED = {
    "auth": {"AMQP_URI", "AUTH_SECRET_KEY", "MAIL_SECRETS_KEY"},
    "notifications": {"AMQP_URI", "MAIL_SECRETS_KEY"},
    "privacy": {"AMQP_URI", "PRIVACY_PSEUDONYM_KEY", "MAIL_SECRETS_KEY"},
    "storage": {"AMQP_URI", "STORAGE_URL_SECRET", "STORAGE_ENCRYPTION_KEYS", "S3_ACCESS_KEY",
                "S3_SECRET_KEY"},
    "gateway": {"AMQP_URI", "STORAGE_URL_SECRET", "STORAGE_ENCRYPTION_KEYS"},
    "ops": {"AMQP_URI", "RABBIT_MANAGEMENT_URL"},
    "billing": {"AMQP_URI", "BILLING_PSEUDONYM_KEY", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"},
    "generation": {"AMQP_URI"},
}


@pytest.mark.parametrize("process", sorted(EXPECTED))
def test_every_config_file_on_its_defaults_is_refused(production, process):
    source = CONFIG_DIR / f"{process}.yaml"
    with pytest.raises(ConfigurationRefused) as caught:
        refuse_insecure_config(load_config(source), process, source)
    named = set(re.findall(r"(?:^|: |; )([A-Z][A-Z0-9_]+)[ :]", str(caught.value)))
    assert EXPECTED[process] <= named, caught.value


def test_generation_config_holds_no_provider_keys(production):
    """The vendors' keys live in the environment, named by the providers file
    (docs/providers.md); a missing one stops generation when it builds its router."""
    source = CONFIG_DIR / "generation.yaml"
    production.setenv("AMQP_URI", f"amqp://darkroom:{STRONG}@rabbitmq:5672/")
    production.setenv("FIELD_ENCRYPTION_KEYS", new_key_entry("prod-1"))  # its outbox's bodies
    production.setenv("FIELD_INDEX_KEY", STRONG)
    refuse_insecure_config(load_config(source), "generation", source)
    assert "api_key" not in source.read_text().lower()


def test_every_placeholder_in_the_env_example_is_refused():
    entries = secrets.env_file_entries(secrets.ENV_EXAMPLE.read_text())
    placeholders = {k: v for k, v in entries.items() if v.startswith("change-me")}
    assert placeholders, "the example's secrets are change-me placeholders"
    for name, value in placeholders.items():
        assert secrets.SECRET_NAME.search(name), f"{name} holds a placeholder but is no secret"
        assert insecure_settings({name: value}), name


# ------------------------------------------------------------------ the real start paths


def process_env(**extra: str) -> dict[str, str]:
    names = config_variables() | {secrets.ENV_VAR, "DARKROOM_CONFIG_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update({"PYTHONUNBUFFERED": "1", secrets.ENV_VAR: "production"})
    env.update(extra)
    return env


def procfile_argv(name: str) -> list[str]:
    for line in (REPO / "deploy" / "Procfile").read_text().splitlines():
        process, _, command = line.partition(":")
        if process.strip() == name:
            argv = shlex.split(command)
            argv[0] = str(BIN / argv[0])
            return argv
    raise KeyError(name)


def run(argv: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_nameko_service_refuses_to_start_before_touching_its_database(tmp_path):
    database = tmp_path / "auth.db"
    env = process_env(AUTH_DATABASE_URL=f"sqlite:///{database}", AUTH_METRICS_PORT="0",
                      AMQP_URI="amqp://darkroom:unused@127.0.0.1:1/")
    result = run(procfile_argv("auth"), env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ConfigurationRefused: auth refuses to start with DARKROOM_ENV=production" in output
    assert "AUTH_SECRET_KEY (AUTH.SECRET_KEY) still has a built-in development default" in output
    assert "MAIL_SECRETS_KEY still has a built-in development default" in output
    assert "FIELD_ENCRYPTION_KEYS still has a built-in development default" in output
    assert "FIELD_INDEX_KEY still has a built-in development default" in output
    assert "dev-only-insecure-auth-secret" not in output
    assert not database.exists()  # refused before the migrations ran


def test_a_nameko_service_with_real_secrets_gets_past_the_check(tmp_path):
    database = tmp_path / "auth.db"
    env = process_env(AUTH_DATABASE_URL=f"sqlite:///{database}", AUTH_METRICS_PORT="0",
                      AUTH_SECRET_KEY=STRONG, MAIL_SECRETS_KEY=STRONG,
                      FIELD_ENCRYPTION_KEYS=new_key_entry("prod-1"), FIELD_INDEX_KEY=STRONG,
                      AMQP_URI=f"amqp://darkroom:{STRONG}@127.0.0.1:1/")  # no broker there
    proc = subprocess.Popen(procfile_argv("auth"), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        migrated = False
        while time.monotonic() < deadline and proc.poll() is None and not migrated:
            time.sleep(0.5)
            if database.exists():
                with sqlite3.connect(database) as conn:
                    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
                migrated = "alembic_version" in tables and "users" in tables
        assert migrated, "the service should have passed the check and migrated"
    finally:
        proc.kill()
        output = proc.communicate(timeout=30)[0]
    assert "ConfigurationRefused" not in output


def test_the_gateway_refuses_to_start_under_gunicorn():
    env = process_env(GATEWAY_PORT="0", GATEWAY_WORKERS="1")
    result = run(procfile_argv("gateway"), env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "gateway refuses to start with DARKROOM_ENV=production" in output
    assert "STORAGE_URL_SECRET (FILES.URL_SECRET)" in output
    assert "dev-only-insecure-storage-url-secret" not in output


def test_the_ops_cli_refuses_with_a_message_and_exit_status_1():
    result = run([str(BIN / "darkroom-ops"), "dlq", "list"], process_env())
    assert result.returncode == 1
    assert result.stderr.startswith("error: darkroom-ops refuses to start with DARKROOM_ENV=")
    assert "RABBIT_MANAGEMENT_URL: the password in the URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_generation_stops_at_start_naming_a_variable_its_providers_file_lacks(tmp_path):
    providers = tmp_path / "providers.yaml"
    providers.write_text("providers:\n  openai: {type: openai_images, base_url: "
                         "'https://api.openai.com', api_key: '${DARKROOM_TEST_UNSET_KEY}'}\n")
    env = process_env(**{secrets.ENV_VAR: "development"},
                      GENERATION_DATABASE_URL=f"sqlite:///{tmp_path}/generation.db",
                      GENERATION_METRICS_PORT="0", GENERATION_PROVIDERS_FILE=str(providers),
                      AMQP_URI="amqp://guest:guest@127.0.0.1:1/")  # no broker there
    env.pop("DARKROOM_TEST_UNSET_KEY", None)
    result = run(procfile_argv("generation"), env)
    assert result.returncode != 0
    assert ("providers.openai.api_key: environment variable DARKROOM_TEST_UNSET_KEY is not set"
            in result.stdout + result.stderr)
