"""Re-authentication before an erasure: the password, the TOTP code when
two-factor sign-in is on, and wrong ones counted toward the lockout."""

from __future__ import annotations

import uuid

import pytest

from services.auth import accounts, reauth, sessions, totp
from services.auth.errors import RecordedFailure
from services.common.errors import DomainError

PASSWORD = "correct horse battery"


@pytest.fixture
def alice(db, settings, now):
    created = accounts.register(db, settings, "alice@example.com", PASSWORD, "Alice", None, now)
    db.commit()
    return created.user


def check(db, settings, user_id, password, totp_code, now):
    """What the service does: the attempt taken and committed, then the check."""
    user, subjects = reauth.begin(db, settings, user_id, now)
    db.commit()
    return reauth.reauthenticate(db, user, subjects, password, totp_code, now)


def refusal(call) -> DomainError:
    with pytest.raises((DomainError, RecordedFailure)) as info:
        call()
    error = info.value
    return error.error if isinstance(error, RecordedFailure) else error


def test_the_right_password_passes_and_a_wrong_one_is_recorded(db, settings, now, alice):
    assert check(db, settings, alice.id, PASSWORD, None, now).id == alice.id
    with pytest.raises(RecordedFailure) as info:
        check(db, settings, alice.id, "wrong password", None, now)
    assert info.value.error.code == "reauthentication_required"
    assert info.value.error.status == 401
    assert info.value.error.details == {"reason": "password"}


def test_wrong_passwords_lock_the_account_like_failed_logins(db, settings, now, alice):
    for _ in range(settings.login_max_failures_per_account):  # 3 in these settings
        with pytest.raises(RecordedFailure):
            check(db, settings, alice.id, "wrong password", None, now)
        db.commit()
    # locked: even the right password is refused, here and at the login
    assert refusal(lambda: check(
        db, settings, alice.id, PASSWORD, None, now)).code == "rate_limited"
    assert refusal(lambda: sessions.begin_login(db, settings, "alice@example.com", None,
                                                now)).code == "rate_limited"


def test_with_two_factor_on_the_code_is_required_too(db, settings, now, alice):
    alice.totp_secret = totp.new_secret()
    db.commit()
    missing = refusal(lambda: check(db, settings, alice.id, PASSWORD, None, now))
    assert (missing.code, missing.details) == ("reauthentication_required", {"reason": "totp"})
    good = totp.code_at(alice.totp_secret, totp.time_step(now))
    wrong = "000000" if good != "000000" else "111111"
    with pytest.raises(RecordedFailure) as info:
        check(db, settings, alice.id, PASSWORD, wrong, now)
    assert info.value.error.details == {"reason": "totp"}
    assert check(db, settings, alice.id, PASSWORD, good, now).id == alice.id
    # the same code cannot be used twice
    assert refusal(lambda: check(
        db, settings, alice.id, PASSWORD, good, now)).code == "reauthentication_required"


def test_an_unknown_user_is_not_found(db, settings, now):
    assert refusal(lambda: check(
        db, settings, uuid.uuid4(), PASSWORD, None, now)).status == 404
