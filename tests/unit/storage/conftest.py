"""Fixtures shared by the storage domain unit tests: an in-memory database and
an in-memory backend, both at the fixed time NOW."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.unit.storage.fakes import MemoryBackend, memory_session

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db():
    session = memory_session()
    yield session
    session.close()


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend(now=NOW)
