"""deploy/local-services.sh, the script `make dev`, `make test` and `make bench`
call, run for real by bash with a PATH of stub server commands.

The stubs keep a server's state in files (a stopped server has no file; starting
it writes one) and record every call, so each test can say which servers were
started and that a running one was never touched. No real server is looked at.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "local-services.sh"
TOOLS = ("awk", "cat", "seq", "sleep", "touch", "grep", "test", "env")

# name -> shell body; $STATE is the directory of state files, $0's name is logged
STUBS = {
    "curl": '[ -e "$STATE/management" ]',
    "rabbitmq-diagnostics": '[ -e "$STATE/rabbitmq" ]',
    "rabbitmq-server": 'touch "$STATE/rabbitmq"',
    "rabbitmq-plugins": '[ -e "$STATE/rabbitmq" ] && touch "$STATE/management"',
    "pg_isready": '[ -e "$STATE/postgres" ]',
    "pg_lsclusters": ('[ -e "$STATE/postgres" ] && s=online || s=down\n'
                      'echo "15 main 5432 $s postgres /var/lib/postgresql/15/main log"'),
    "pg_ctlcluster": 'touch "$STATE/postgres"',
    "redis-cli": '[ -e "$STATE/redis" ] && echo PONG || exit 1',
    "redis-server": 'touch "$STATE/redis"',
}


@pytest.fixture
def machine(tmp_path):
    """A fake machine: ``run(*servers, up=..., installed=..., env=...)`` runs the
    script with those servers up and those commands installed (default: all)."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)

    def run(*servers, up=(), installed=tuple(STUBS), env=None, broken=()):
        for name in STUBS:
            (bin_dir / name).unlink(missing_ok=True)
        for name in installed:
            stub = bin_dir / name
            stub.write_text(f'#!{shutil.which("bash")}\necho "{name} $*" >> "$STATE/calls"\n'
                            f"{'true' if name in broken else STUBS[name]}\n")
            stub.chmod(0o755)
        for name in ("calls", "rabbitmq", "management", "postgres", "redis"):
            (state / name).unlink(missing_ok=True)
        for name in up:
            (state / name).touch()
        result = subprocess.run(
            [shutil.which("bash"), str(SCRIPT), *servers], capture_output=True, text=True,
            env={"PATH": str(bin_dir), "STATE": str(state), "TMPDIR": str(tmp_path),
                 **(env or {})}, timeout=60)
        calls = (state / "calls").read_text().splitlines() if (state / "calls").exists() else []
        result.calls = calls
        result.up = sorted(p.name for p in state.iterdir() if p.name != "calls")
        return result

    return run


ALL_UP = ("rabbitmq", "management", "postgres", "redis")


def starts(calls):
    return [c for c in calls if c.split()[0] in (
        "rabbitmq-server", "rabbitmq-plugins", "pg_ctlcluster", "redis-server")]


def test_everything_up_is_only_probed(machine):
    result = machine(up=ALL_UP)
    assert result.returncode == 0, result.stderr
    assert starts(result.calls) == []
    assert result.stderr == ""


def test_stopped_servers_are_started_and_the_plugin_enabled(machine):
    result = machine()
    assert result.returncode == 0, result.stderr
    assert result.up == sorted(ALL_UP)
    assert starts(result.calls) == [
        "rabbitmq-server -detached", "rabbitmq-plugins enable --quiet rabbitmq_management",
        "pg_ctlcluster --skip-systemctl-redirect 15 main start",
        next(c for c in result.calls if c.startswith("redis-server"))]
    assert "starting RabbitMQ" in result.stderr and "starting Redis" in result.stderr


def test_a_running_broker_only_gets_its_management_plugin(machine):
    result = machine("rabbitmq", up=("rabbitmq",))
    assert result.returncode == 0, result.stderr
    assert starts(result.calls) == ["rabbitmq-plugins enable --quiet rabbitmq_management"]
    assert "management" in result.up


def test_only_the_named_servers_are_looked_at(machine):
    result = machine("rabbitmq", up=("rabbitmq", "management"))
    assert result.returncode == 0, result.stderr
    assert [c.split()[0] for c in result.calls] == ["curl"]


def test_a_server_the_tests_take_from_the_environment_is_not_touched(machine):
    result = machine(up=("rabbitmq", "management", "redis"),
                     env={"DARKROOM_TEST_POSTGRES_URL": "postgresql://elsewhere/db"})
    assert result.returncode == 0, result.stderr
    assert not [c for c in result.calls if c.startswith("pg_")]


def test_a_server_that_is_not_installed_fails_with_what_to_install(machine):
    installed = [name for name in STUBS if not name.startswith("redis")]
    result = machine(up=("rabbitmq", "management", "postgres"), installed=installed)
    assert result.returncode == 1
    assert "Redis does not answer on 127.0.0.1:6379, and it is not installed here" \
        in result.stderr
    assert "apt-get install redis-server" in result.stderr


def test_nothing_installed_names_every_missing_server(machine):
    result = machine(installed=())
    assert result.returncode == 1
    for name in ("rabbitmq-server", "postgresql", "redis-server"):
        assert f"install {name} (e.g. apt-get install {name})" in result.stderr, name


def test_a_server_that_does_not_come_up_fails_the_run(machine):
    result = machine("redis", broken=["redis-server"], env={"LOCAL_SERVICES_TIMEOUT": "1"})
    assert result.returncode == 1
    assert "Redis did not come up within 1s" in result.stderr


def test_an_unknown_server_is_bad_usage(machine):
    result = machine("mysql")
    assert result.returncode == 2 and "unknown server 'mysql'" in result.stderr
