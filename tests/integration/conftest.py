"""Integration tests: each module starts the services it needs, and they stop
when the module ends, so their database connections do not pile up over the
session (PostgreSQL's max_connections)."""

from __future__ import annotations

import pytest

from tests.conftest import processes, unavailable
from tests.private_postgres import PrivatePostgres, pg_bindir


@pytest.fixture(scope="module")
def start_process(process_log_dir):
    """``start_process("auth", env)`` → a running Process, stopped with the module."""
    start, stop_all = processes(process_log_dir)
    yield start
    stop_all()


@pytest.fixture(scope="module")
def private_postgres():
    """A PostgreSQL server of the module's own (tests/private_postgres.py), for
    tests that stop or restart it; the shared one is never restarted. Without
    the server's binaries the test is skipped, and fails under CI=true."""
    bindir = pg_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        unavailable("a PostgreSQL server to start (initdb, pg_ctl)",
                    "not installed (deploy/test-tools.sh installs Debian's postgresql)")
    try:
        server = PrivatePostgres(bindir).start()
    except KeyError:  # root, and no postgres OS user to run the server as
        unavailable("a PostgreSQL server to start", "running as root without a 'postgres' user")
    yield server
    server.destroy()
