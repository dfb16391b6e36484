"""Fixtures shared by the storage domain unit tests: an in-memory database and
an in-memory backend, both at the fixed time NOW."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.storage.models import Base
from tests.unit.databases import memory_database
from tests.unit.storage.fakes import MemoryBackend

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db():
    with memory_database(Base.metadata) as session:
        yield session


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend(now=NOW)
