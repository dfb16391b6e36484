"""Configuration: nameko YAML files with ``${VAR:default}`` substitution.

``nameko run`` registers the substitution itself; every other process that reads
the same files (the gateway, the ops CLI, tests) goes through :func:`load_config`
so that one file means the same thing everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "deploy" / "config"

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
