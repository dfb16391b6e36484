"""Fixtures for the privacy unit tests: a SQLite database built by the real
migrations, settings, a fixed clock, and a ``dispatch`` that validates each
event against its contract and keeps it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from services.common.contracts import privacy as _privacy  # noqa: F401 (registers the events)
from services.common.sealed import Sealer
from services.privacy.settings import PrivacySettings
from tests.unit.databases import migrated_database
from tests.unit.events import Events

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
# The key privacy seals the erasure cancel token with (notifications holds it too).
MAIL_SECRETS_KEY = "unit-test-mail-secrets-key"
SEALER = Sealer(MAIL_SECRETS_KEY)


def privacy_settings(**section) -> PrivacySettings:
    """Settings from a ``PRIVACY`` section, with ``MAIL_SECRETS_KEY``."""
    return PrivacySettings.from_config({"MAIL_SECRETS_KEY": MAIL_SECRETS_KEY, "PRIVACY": section})


def cancel_token(event: dict) -> str:
    """The cancel token a privacy.erasure_scheduled event carries sealed."""
    return SEALER.open(event["sealed_cancel_token"])


@pytest.fixture
def db(tmp_path):
    with migrated_database("privacy", tmp_path) as session:
        yield session


@pytest.fixture
def settings() -> PrivacySettings:
    return privacy_settings(PSEUDONYM_KEY="unit-test-key", ERASURE_SETTLE_SECONDS=0,
                            PART_TIMEOUT_SECONDS=600, PART_MAX_ATTEMPTS=3, ASSEMBLY_MAX_ATTEMPTS=2)


@pytest.fixture
def events() -> Events:
    return Events("privacy")


@pytest.fixture
def user() -> uuid.UUID:
    return uuid.uuid4()
