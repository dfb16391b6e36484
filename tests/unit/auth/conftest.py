"""Auth unit tests: domain modules against an in-memory SQLite session."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.auth.models import Base
from services.auth.settings import AuthSettings
from tests.unit.databases import memory_database


@pytest.fixture
def db():
    with memory_database(Base.metadata) as session:
        yield session


MAIL_SECRETS_KEY = "unit-test-mail-secrets-key"


@pytest.fixture
def settings() -> AuthSettings:
    return AuthSettings.from_config({
        "MAIL_SECRETS_KEY": MAIL_SECRETS_KEY,
        "AUTH": {
            "SECRET_KEY": "unit-test-secret",
            "LOGIN_MAX_FAILURES_PER_ACCOUNT": 3,
            "LOGIN_MAX_FAILURES_PER_ADDRESS": 5,
            "LOGIN_FAILURE_WINDOW_SECONDS": 600,
            "LOGIN_LOCKOUT_SECONDS": 300,
        }
    })


@pytest.fixture
def now() -> datetime:
    return datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
