"""The age gate (services/auth/age.py) and registration under it."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest
from sqlalchemy import func, select

from services.auth import accounts, age
from services.auth.models import User
from services.common.errors import DomainError

TODAY = date(2026, 3, 1)


def gate(settings, minimum=13, check="birth_date"):
    return replace(settings, minimum_age=minimum, age_check=check)


def code_of(settings, birth_date=None, age_confirmed=None) -> str:
    with pytest.raises(DomainError) as info:
        age.check(settings, birth_date, age_confirmed, TODAY)
    return info.value.code


def test_off_by_default_and_asks_for_nothing(settings):
    assert settings.minimum_age == 0
    assert age.check(settings, None, None, TODAY) is False


@pytest.mark.parametrize(("born", "meets"), [
    (date(2013, 3, 1), True),    # 13 today
    (date(2013, 3, 2), False),   # 13 tomorrow
    (date(2000, 1, 1), True),
    (date(2020, 6, 1), False),
])
def test_a_birth_date_is_compared_with_the_minimum(settings, born, meets):
    if meets:
        assert age.check(gate(settings), born, None, TODAY) is True
    else:
        assert code_of(gate(settings), born) == "under_minimum_age"


def test_born_on_29_february_turns_a_year_older_on_1_march():
    assert age.years_between(date(2012, 2, 29), date(2026, 2, 28)) == 13
    assert age.years_between(date(2012, 2, 29), date(2026, 3, 1)) == 14


def test_a_missing_or_future_birth_date_is_refused(settings):
    with pytest.raises(DomainError) as info:
        age.check(gate(settings), None, None, TODAY)
    assert info.value.code == "age_required"
    assert info.value.details["fields"] == {"birth_date": ["Missing data for required field."]}
    assert code_of(gate(settings), date(2027, 1, 1)) == "invalid_request"
    # with birth dates asked for, a bare attestation is not enough
    assert code_of(gate(settings), None, True) == "age_required"


def test_attestation_takes_age_confirmed(settings):
    attest = gate(settings, 14, "attestation")
    assert age.check(attest, None, True, TODAY) is True
    assert code_of(attest, None, False) == "under_minimum_age"
    assert code_of(attest) == "age_required"
    assert code_of(attest, date(2015, 1, 1)) == "under_minimum_age"


def test_registration_keeps_only_that_the_minimum_was_met(db, settings, now):
    created = accounts.register(db, settings, "teen@example.com", "correct horse battery",
                                None, None, now, minimum_age_met=True)
    assert created.user.minimum_age_met_at == now
    plain = accounts.register(db, settings, "plain@example.com", "correct horse battery",
                              None, None, now)
    assert plain.user.minimum_age_met_at is None
    columns = {c.name for c in User.__table__.columns}
    assert not {"birth_date", "age", "date_of_birth"} & columns
    assert db.scalar(select(func.count()).select_from(User)) == 2


def test_settings_read_the_gate_and_refuse_nonsense():
    from services.auth.settings import AuthSettings

    base = {"MAIL_SECRETS_KEY": "k", "AUTH": {"SECRET_KEY": "s"}}
    on = AuthSettings.from_config({**base, "AUTH": {"SECRET_KEY": "s", "MINIMUM_AGE": "14",
                                                    "AGE_CHECK": "attestation"}})
    assert (on.minimum_age, on.age_check) == (14, "attestation")
    with pytest.raises(ValueError, match="AGE_CHECK"):
        AuthSettings.from_config({**base, "AUTH": {"SECRET_KEY": "s", "AGE_CHECK": "vibes"}})
    with pytest.raises(ValueError, match="MINIMUM_AGE"):
        AuthSettings.from_config({**base, "AUTH": {"SECRET_KEY": "s", "MINIMUM_AGE": "-1"}})
