"""The one version: pyproject.toml's, read through importlib.metadata, reported by
the gateway's /healthz (and its OpenAPI document) and by `darkroom-ops --version`."""

from __future__ import annotations

import tomllib
from pathlib import Path

from click.testing import CliRunner

from ops.cli import cli
from services.common.version import darkroom_version

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def test_the_version_is_pyprojects():
    assert darkroom_version() == tomllib.loads(PYPROJECT.read_text())["project"]["version"]


def test_healthz_documents_the_version(app):  # the answer: test_http.py's test_healthz
    document = app.test_client().get("/v1/openapi.json").get_json()
    assert "version" in document["components"]["schemas"]["Health"]["properties"]


def test_ops_reports_the_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"darkroom-ops {darkroom_version()}\n"
