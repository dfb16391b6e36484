"""The PRIVACY section: defaults, and values that must refuse to start."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.common.sealed import Sealer
from services.privacy.settings import PrivacySettings
from tests.unit.privacy.conftest import MAIL_SECRETS_KEY, privacy_settings


def test_defaults_are_the_documented_ones():
    settings = privacy_settings(PSEUDONYM_KEY="k")
    assert settings.due == timedelta(days=30)
    assert settings.erasure_grace == timedelta(hours=72)
    assert settings.erasure_settle == timedelta(seconds=30)
    assert settings.part_timeout == timedelta(hours=1)
    assert (settings.part_max_attempts, settings.access_log_retention_days) == (5, 180)
    assert settings.work_dir is None


@pytest.mark.parametrize("section", [
    {},
    {"PSEUDONYM_KEY": ""},
    {"PSEUDONYM_KEY": "k", "DUE_DAYS": 0},
    {"PSEUDONYM_KEY": "k", "ERASURE_GRACE_HOURS": -1},
    # the grace period may not eat the legal month: at most half of DUE_DAYS
    {"PSEUDONYM_KEY": "k", "ERASURE_GRACE_HOURS": 24 * 15 + 1},
    {"PSEUDONYM_KEY": "k", "DUE_DAYS": 4, "ERASURE_GRACE_HOURS": 72},
    {"PSEUDONYM_KEY": "k", "PART_MAX_ATTEMPTS": 0},
    {"PSEUDONYM_KEY": "k", "ACCESS_LOG_RETENTION_DAYS": 0},
    {"PSEUDONYM_KEY": "k", "PART_TIMEOUT_SECONDS": "soon"},
])
def test_bad_settings_stop_the_service(section):
    with pytest.raises(ValueError):
        privacy_settings(**section)


@pytest.mark.parametrize("key", [None, "", " , "])
def test_the_service_needs_the_mail_secrets_key_to_seal_the_cancel_token(key):
    with pytest.raises(ValueError, match="MAIL_SECRETS_KEY must be set"):
        PrivacySettings.from_config({"MAIL_SECRETS_KEY": key, "PRIVACY": {"PSEUDONYM_KEY": "k"}})
    sealer = privacy_settings(PSEUDONYM_KEY="k").sealer
    assert Sealer(MAIL_SECRETS_KEY).open(sealer.seal("token")) == "token"


def test_the_grace_period_is_in_hours_and_may_be_a_fraction():
    settings = privacy_settings(PSEUDONYM_KEY="k", ERASURE_GRACE_HOURS="0.001")
    assert settings.erasure_grace == timedelta(seconds=3.6)


def test_the_deployed_config_file_loads():
    from services.common.config import config_path, load_config

    settings = PrivacySettings.from_config(load_config(config_path("privacy")))
    assert settings.access_log_retention_days == 180 and settings.pseudonym_key
    assert settings.sealer.open(settings.sealer.seal("token")) == "token"
