"""`darkroom-ops users grant-admin|revoke-admin` over real nameko RPC, against a
stand-in auth service (tests/integration/probe_service.py:FakeAuthService)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, base_env
from tests.integration.probe_service import start_probe

pytestmark = pytest.mark.integration

OPS = str(Path(sys.executable).parent / "darkroom-ops")


def ops(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([OPS, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def env(make_vhost, start_process, tmp_path_factory):
    amqp_uri, _ = make_vhost("ops-users")
    workdir = tmp_path_factory.mktemp("fake-auth")
    start_probe(start_process, workdir, amqp_uri, f"sqlite:///{workdir}/unused.db", cls="FakeAuthService")
    return base_env(AMQP_URI=amqp_uri, OPS_RPC_TIMEOUT_SECONDS=10)


def test_grant_then_revoke(env):
    result = ops(env, "users", "grant-admin", "ada@example.com")
    assert result.returncode == 0, result.stderr
    assert "ada@example.com is now an administrator" in result.stdout
    assert "otpauth://totp/Darkroom:ada@example.com?secret=" in result.stdout

    result = ops(env, "users", "revoke-admin", "ada@example.com")
    assert result.returncode == 0, result.stderr
    assert "ada@example.com is no longer an administrator" in result.stdout
    assert "otpauth" not in result.stdout


def test_a_domain_error_prints_its_message_and_fails(env):
    result = ops(env, "users", "grant-admin", "nobody@elsewhere.test")
    assert result.returncode == 1
    assert "error: user not found (not_found)" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_auth_service_is_a_clear_error(make_vhost):
    amqp_uri, _ = make_vhost("ops-no-auth")
    result = ops(base_env(AMQP_URI=amqp_uri, OPS_RPC_TIMEOUT_SECONDS=5), "users", "grant-admin", "ada@example.com")
    assert result.returncode == 1
    assert "error: no auth service is running" in result.stderr or "did not answer" in result.stderr
    assert "Traceback" not in result.stderr
