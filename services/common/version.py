"""Darkroom's version: pyproject.toml's, as the installed distribution reports
it (importlib.metadata; `make venv` and the image install the project). The
gateway's ``/healthz`` and ``darkroom-ops --version`` report it."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "darkroom"


@cache
def darkroom_version() -> str:
    """The installed version, or ``"unknown"`` when the project is not installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
