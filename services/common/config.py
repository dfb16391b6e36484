"""Configuration: nameko YAML files with ``${VAR:default}`` substitution.

``nameko run`` registers the substitution itself; every other process that reads
the same files (the gateway, the ops CLI, tests) goes through :func:`load_config`
so that one file means the same thing everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "deploy" / "config"
# make dev's gateway on its default port; the Makefile derives it from GATEWAY_PORT.
DEFAULT_PUBLIC_BASE_URL = "http://127.0.0.1:8000"

_registered = False


def setup_yaml_parser() -> None:
    """Register nameko's ``${VAR:default}`` / ``!env_var`` / ``!raw_env_var`` tags."""
    global _registered
    if _registered:
        return
    from nameko.cli.main import setup_yaml_parser as nameko_setup

    nameko_setup()
    _registered = True


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a nameko YAML config file with environment substitution applied."""
    setup_yaml_parser()
    with open(path) as fh:
        return yaml.safe_load(fh) or {}


def config_path(name: str) -> Path:
    """The config file of a process (``auth``, ``gateway``...) under deploy/config.

    ``DARKROOM_CONFIG_DIR`` points somewhere else (the container image, a test).
    """
    base = Path(os.environ.get("DARKROOM_CONFIG_DIR", CONFIG_DIR))
    return base / f"{name}.yaml"


def flag(value: Any) -> bool:
    """A yes/no setting: a bool, or a string "1", "true", "yes" or "on" (any case)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _base_url(name: str, value: Any) -> str:
    url = str(value).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment:
        raise ValueError(f"{name} must be an absolute http(s) URL without query, not {url!r}")
    return url


def public_base_url(config: Mapping[str, Any]) -> str:
    """``PUBLIC_BASE_URL`` of a config section (each service's section reads the
    one ``PUBLIC_BASE_URL`` variable of the environment): where clients reach
    the gateway, without a trailing slash. Every URL Darkroom hands out starts
    with it (signed file URLs of the fs backend; mail links and checkout return
    URLs unless ``APP_BASE_URL`` names a separate web app). ValueError at start
    when it is not an absolute http(s) URL."""
    return _base_url("PUBLIC_BASE_URL",
                     config.get("PUBLIC_BASE_URL") or DEFAULT_PUBLIC_BASE_URL)


def app_base_url(config: Mapping[str, Any]) -> str:
    """``APP_BASE_URL``: the base of the pages people open from a mail or come
    back to from a checkout, when a separate web app serves them;
    :func:`public_base_url` when it is unset."""
    value = config.get("APP_BASE_URL")
    return _base_url("APP_BASE_URL", value) if value else public_base_url(config)


class Section:
    """One section of a service's config (``config[name]``, or ``config`` itself
    when it is that section), read with the defaults of its settings class."""

    def __init__(self, config: Mapping[str, Any], name: str):
        self.name = name
        self.values: Mapping[str, Any] = config.get(name, config) or {}

    def get(self, key: str, default: Any) -> Any:
        """The value of ``key``; ``default`` when it is missing or null, or
        empty where the default is not a string (an empty string stays empty)."""
        value = self.values.get(key)
        if value is None or (value == "" and not isinstance(default, str)):
            return default
        return value

    def required(self, key: str) -> str:
        """The value of ``key``; ValueError when it is missing or empty."""
        value = str(self.values.get(key) or "")
        if not value:
            raise ValueError(f"{self.name}.{key} must be set")
        return value

    def duration(self, key: str, default: timedelta, unit: str) -> timedelta:
        """``key``: a number (fractions allowed) of ``unit`` (days, hours,
        minutes or seconds); ``default`` when missing."""
        one = timedelta(**{unit: 1})
        return one * float(self.get(key, default / one))

    def positive(self, key: str, default: Any, kind: type) -> Any:
        """``kind(get(key, default))``; ValueError unless it is above 0."""
        value = kind(self.get(key, default))
        if value <= 0:
            raise ValueError(f"{self.name}.{key} must be positive")
        return value
