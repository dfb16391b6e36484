"""Integration tests: each module starts the services it needs, and they stop
when the module ends, so their database connections do not pile up over the
session (PostgreSQL's max_connections)."""

from __future__ import annotations

import pytest

from tests.conftest import processes


@pytest.fixture(scope="module")
def start_process(process_log_dir):
    """``start_process("auth", env)`` → a running Process, stopped with the module."""
    start, stop_all = processes(process_log_dir)
    yield start
    stop_all()
