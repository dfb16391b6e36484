"""Fixtures for the billing domain unit tests: an in-memory SQLite database
with the billing tables, the default settings, an event recorder, and a
fixed clock (NOW) the tests pass to every domain function."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from services.billing import plans
from services.billing.models import Base
from services.billing.settings import BillingSettings
from tests.unit.databases import memory_database
from tests.unit.events import Events

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def db():
    with memory_database(Base.metadata) as session:
        yield session


@pytest.fixture
def settings() -> BillingSettings:
    return BillingSettings()


@pytest.fixture
def events() -> Events:
    return Events("billing")


@pytest.fixture
def user(db, settings, events) -> uuid.UUID:
    """A user whose account was opened at NOW (50 signup credits, expiring in 30 days)."""
    user_id = uuid.uuid4()
    plans.open_account(db, settings, user_id, NOW, events)
    db.commit()
    return user_id
