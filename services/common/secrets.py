"""Production mode: no Darkroom process starts with a secret anyone could know.

``DARKROOM_ENV=production`` (set by deploy/docker-compose.yml) makes every
process check the configuration it loaded before it connects to anything: the
nameko services when their container is built (:class:`ProductionSecrets`, a
dependency of every ``DarkroomService``), the gateway in its app factory and
``darkroom-ops`` when it reads its config. A process refuses to start when a
secret is empty, still has a built-in development default (``dev-only-...``,
``minioadmin``, ``guest:guest`` in a broker URL) or still has the placeholder
value of ``deploy/.env.example``. The refusal names the environment variable
(and the config key) of each such secret, never its value.

A secret is a config value whose key ends in ``SECRET``, ``PASSWORD``,
``TOKEN``, ``KEY`` or ``KEYS`` (``AUTH.SECRET_KEY``, ``STORAGE.S3_ACCESS_KEY``,
the key ring ``STORAGE.ENCRYPTION_KEYS``...), or
the password inside any URL (``AMQP_URI``, ``*_DATABASE_URL``, ``MAIL.URL``,
``RABBIT_MANAGEMENT_URL``). Every secret a config file names must be real in
production, even one the current settings leave unused (the S3 keys with the
``fs`` backend): switching a setting later must not quietly bring a dev
default into use. The exception is a section switched off with ``enabled:
false`` (a model provider that is not configured): switching it on is the
moment to give it its key, and then it is checked.

Without ``DARKROOM_ENV`` (or with ``development``) nothing is checked: ``make
dev`` and the tests run on the defaults.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from nameko.extensions import DependencyProvider

from services.common.config import CONFIG_DIR, REPO_ROOT, config_path

ENV_VAR = "DARKROOM_ENV"
PRODUCTION = "production"
MODES = ("development", PRODUCTION)
ENV_EXAMPLE = REPO_ROOT / "deploy" / ".env.example"

SECRET_NAME = re.compile(r"(SECRETS?|PASSWORD|TOKEN|COOKIE|(^|_)KEYS?)$")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_]+)(?::([^}]*))?\}")
WELL_KNOWN = frozenset({"guest", "minioadmin", "postgres", "password", "secret", "admin"})
DEV_MARKERS = ("dev-only", "dev_only", "insecure")
PLACEHOLDER_PREFIXES = ("change-me", "changeme")


class ConfigurationRefused(RuntimeError):
    """The process must not start with this configuration (the message says why)."""


def mode() -> str:
    """``development`` or ``production``; a value that is neither is refused, so a
    typo (``prod``) never silently turns the checks off."""
    value = os.environ.get(ENV_VAR, "").strip().lower() or "development"
    if value not in MODES:
        raise ConfigurationRefused(
            f"{ENV_VAR} must be one of {', '.join(MODES)} (or unset), not {value!r}")
    return value


def is_production() -> bool:
    return mode() == PRODUCTION


def refuse_insecure_config(config: Mapping[str, Any], process: str,
                           source: str | os.PathLike | None = None) -> None:
    """In production mode, raise :class:`ConfigurationRefused` naming every weak
    secret of ``config``. ``source`` is the YAML file it came from, read to name
    the environment variable behind each key. A no-op in development."""
    if not is_production():
        return
    problems = insecure_settings(config, source)
    if problems:
        raise ConfigurationRefused(
            f"{process} refuses to start with {ENV_VAR}={PRODUCTION}: " + "; ".join(problems)
            + ". Set each to a long random value (see deploy/.env.example).")


def insecure_settings(config: Mapping[str, Any],
                      source: str | os.PathLike | None = None) -> list[str]:
    """One line per weak secret of ``config`` (names only, never values)."""
    variables = config_variables(Path(source)) if source else {}
    known = known_values()
    problems = []
    for path, value in _leaves(config):
        key = path.rsplit(".", 1)[-1]
        variable = variables.get(path)
        name = f"{variable} ({path})" if variable and variable != path else path
        if SECRET_NAME.search(key.upper()):
            reason = _first_weakness(_parts(value), known)
            if reason:
                problems.append(f"{name} {reason}")
        elif isinstance(value, str) and "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                continue
            reason = None if password is None else _weakness(unquote(password), known)
            if reason:
                problems.append(f"{name}: the password in the URL {reason}")
    return problems


# ------------------------------------------------------------------ what is weak


class KnownValues:
    """Values nobody may use as a production secret."""

    def __init__(self, example: set[str], defaults: set[str]):
        self.example = example
        self.defaults = defaults


def known_values() -> KnownValues:
    """The secret values of ``deploy/.env.example`` and the secret defaults of
    every config file (``${AUTH_SECRET_KEY:dev-only-...}``, the ``guest``
    password in ``${AMQP_URI:amqp://guest:guest@...}``)."""
    example: set[str] = set()
    if ENV_EXAMPLE.is_file():
        for name, value in env_file_entries(ENV_EXAMPLE.read_text()).items():
            example |= _secret_values(name, value)
    defaults: set[str] = set()
    directories = {Path(config_path("any")).parent, CONFIG_DIR}
    for directory in directories:
        for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else ():
            for name, default in ENV_REFERENCE.findall(path.read_text()):
                defaults |= _secret_values(name, default)
    example.discard("")
    defaults.discard("")
    return KnownValues(example, defaults)


def env_file_entries(text: str, include_commented: bool = False) -> dict[str, str]:
    """``NAME=value`` lines of an env file; ``# NAME=value`` ones too if asked."""
    pattern = r"^\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$"
    entries = {}
    for line in text.splitlines():
        match = re.match(pattern, line)
        if match and (include_commented or not match.group(1)):
            entries[match.group(2)] = match.group(3).strip()
    return entries


def _secret_values(name: str, value: str) -> set[str]:
    if SECRET_NAME.search(name):
        return {value.strip()}
    if "://" in value:
        try:
            password = urlsplit(value.strip()).password
        except ValueError:
            return set()
        return {unquote(password)} if password else set()
    return set()


def _weakness(value: str, known: KnownValues) -> str | None:
    value = value.strip()
    lowered = value.lower()
    if not value:
        return "is empty"
    if value in known.example:
        return "still has its value from deploy/.env.example"
    if value in known.defaults or any(marker in lowered for marker in DEV_MARKERS):
        return "still has a built-in development default"
    if lowered.startswith(PLACEHOLDER_PREFIXES):
        return "is still a placeholder"
    if lowered in WELL_KNOWN:
        return "is a well-known default credential"
    return None


def _first_weakness(parts: list[str], known: KnownValues) -> str | None:
    for part in parts:
        reason = _weakness(part, known)
        if reason:
            return reason
    return None


def _parts(value: Any) -> list[str]:
    """A secret's values: a list's items, or a comma-separated string's parts
    (``STRIPE_WEBHOOK_SECRET`` holds the old and new secret while rotating)."""
    if value is None:
        return [""]
    if isinstance(value, list | tuple | set):
        return [str(v) for v in value] or [""]
    text = str(value)
    parts = [p for p in text.split(",") if p.strip()] if "," in text else [text]
    return parts or [""]


def _leaves(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every value with its dotted key path, except inside a section switched off
    (``enabled: false``: a provider nobody configured needs no API key)."""
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            if "enabled" in value and not _enabled(value["enabled"]):
                continue
            yield from _leaves(value, path)
        else:
            yield path, value


def _enabled(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def config_variables(source: Path) -> dict[str, str]:
    """Config key path (``AUTH.SECRET_KEY``) → the environment variable that
    fills it (``AUTH_SECRET_KEY``), from the ``${VAR:default}`` in the file."""
    import yaml

    try:
        root = yaml.compose(source.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    found: dict[str, str] = {}

    def walk(node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                walk(value, f"{path}.{key.value}" if path else str(key.value))
        elif isinstance(node, yaml.ScalarNode):
            match = ENV_REFERENCE.search(str(node.value))
            if match:
                found[path] = match.group(1)

    if root is not None:
        walk(root, "")
    return found


class ProductionSecrets(DependencyProvider):
    """Refuses to build a service's container with weak secrets in production.

    The check runs in ``bind``, when nameko builds the container, rather than in
    ``setup``: setups run concurrently, and the database provider's would
    already be migrating. The config file is ``deploy/config/<service>.yaml``
    (the Procfile's convention, checked by tests/unit/test_deploy.py)."""

    def bind(self, container, attr_name):
        refuse_insecure_config(container.config, container.service_name,
                               config_path(container.service_name))
        return super().bind(container, attr_name)
