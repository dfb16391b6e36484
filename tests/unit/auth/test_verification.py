from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from services.auth import accounts, verification
from services.auth.errors import RecordedFailure
from services.auth.models import EmailVerification
from services.common.errors import DomainError

PASSWORD = "correct horse battery"


@pytest.fixture
def registered(db, settings, now):
    return accounts.register(db, settings, "alice@example.com", PASSWORD, None, None, now)


def error_of(callable_, *args) -> DomainError:
    with pytest.raises((DomainError, RecordedFailure)) as info:
        callable_(*args)
    error = info.value
    return error.error if isinstance(error, RecordedFailure) else error


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_code_is_stored_only_as_an_hmac(db, registered):
    row = db.scalar(select(EmailVerification))
    assert registered.verification["code"] not in row.code_hmac
    assert len(row.code_hmac) == 64
    assert registered.verification["purpose"] == "registration"


def test_right_code_verifies_and_cannot_be_used_again(db, settings, now, registered):
    code = registered.verification["code"]
    user = verification.verify(db, settings, "alice@example.com", code, now)
    assert user.email_verified
    assert error_of(verification.verify, db, settings, "alice@example.com", code, now).code == (
        "invalid_code"
    )


def test_wrong_code_and_unknown_email_give_the_same_answer(db, settings, now, registered):
    code = registered.verification["code"]
    wrong_code = error_of(verification.verify, db, settings, "alice@example.com", wrong(code), now)
    unknown = error_of(verification.verify, db, settings, "nobody@example.com", code, now)
    assert (wrong_code.code, wrong_code.status) == (unknown.code, unknown.status) == (
        "invalid_code", 400
    )


def test_attempts_are_counted_and_exhausted(db, settings, now, registered):
    code = registered.verification["code"]
    for _ in range(settings.verification_max_attempts):
        error = error_of(verification.verify, db, settings, "alice@example.com", wrong(code), now)
        assert error.code == "invalid_code"
    assert db.scalar(select(EmailVerification.attempts)) == 5
    error = error_of(verification.verify, db, settings, "alice@example.com", code, now)
    assert error.code == "code_expired"


def test_expired_code_is_refused(db, settings, now, registered):
    code = registered.verification["code"]
    later = now + timedelta(minutes=15)
    assert error_of(verification.verify, db, settings, "alice@example.com", code, later).code == (
        "code_expired"
    )
    assert verification.verify(db, settings, "alice@example.com", code, later - timedelta(seconds=1))


def test_resend_is_rate_limited_and_supersedes_the_old_code(db, settings, now, registered):
    old = registered.verification["code"]
    assert verification.resend(db, settings, "alice@example.com", now + timedelta(seconds=59)) == []
    events = verification.resend(db, settings, "alice@example.com", now + timedelta(seconds=60))
    assert [e["purpose"] for e in events] == ["registration"]
    new = events[0]["code"]
    at = now + timedelta(seconds=61)
    if new != old:
        assert error_of(verification.verify, db, settings, "alice@example.com", old, at).code == (
            "invalid_code"
        )
    assert verification.verify(db, settings, "alice@example.com", new, at).email_verified


def test_resend_for_verified_or_unknown_addresses_sends_nothing(db, settings, now, registered):
    later = now + timedelta(hours=1)
    verification.verify(db, settings, "alice@example.com", registered.verification["code"], now)
    assert verification.resend(db, settings, "alice@example.com", later) == []
    assert verification.resend(db, settings, "nobody@example.com", later) == []


def test_email_change_is_completed_by_the_code_sent_to_the_new_address(
    db, settings, now, registered
):
    user = registered.user
    event = accounts.request_email_change(db, settings, user, "alice@new.example", PASSWORD, now)
    assert (event["email"], event["purpose"]) == ("alice@new.example", "email_change")
    # a pending change can be resent to the new address
    events = verification.resend(db, settings, "alice@new.example", now + timedelta(minutes=2))
    assert [e["purpose"] for e in events] == ["email_change"]
    changed = verification.verify(
        db, settings, "alice@new.example", events[0]["code"], now + timedelta(minutes=3)
    )
    assert (changed.id, changed.email, changed.email_verified) == (
        user.id, "alice@new.example", True
    )
    # the registration code sent to the old address is void now
    error = error_of(
        verification.verify, db, settings, "alice@example.com", registered.verification["code"], now
    )
    assert error.code == "invalid_code"


def test_email_change_to_an_address_taken_meanwhile_is_refused(db, settings, now, registered):
    event = accounts.request_email_change(
        db, settings, registered.user, "bob@example.com", PASSWORD, now
    )
    accounts.register(db, settings, "bob@example.com", PASSWORD, None, None, now)
    error = error_of(verification.verify, db, settings, "bob@example.com", event["code"], now)
    # bob's own registration code is a candidate too, but this code is the change's
    assert (error.code, error.status) == ("email_taken", 409)


def test_email_change_codes_to_one_address_are_rate_limited(db, settings, now, registered):
    user = registered.user
    assert accounts.request_email_change(db, settings, user, "new@example.com", PASSWORD, now)
    soon = now + timedelta(seconds=30)
    assert accounts.request_email_change(db, settings, user, "new@example.com", PASSWORD, soon) is None
    # a corrected address gets its code at once, and voids the first one
    other = accounts.request_email_change(db, settings, user, "newer@example.com", PASSWORD, soon)
    assert other["email"] == "newer@example.com"
    assert verification.resend(db, settings, "new@example.com", now + timedelta(hours=1)) == []


def test_email_change_needs_the_password_and_a_new_free_address(db, settings, now, registered):
    user = registered.user
    wrong = error_of(accounts.request_email_change, db, settings, user, "x@example.com", "bad", now)
    assert (wrong.code, wrong.status) == ("invalid_credentials", 403)
    same = error_of(
        accounts.request_email_change, db, settings, user, "alice@example.com", PASSWORD, now
    )
    assert same.code == "invalid_request"
    accounts.register(db, settings, "bob@example.com", PASSWORD, None, None, now)
    taken = error_of(
        accounts.request_email_change, db, settings, user, "bob@example.com", PASSWORD, now
    )
    assert (taken.code, taken.status) == ("email_taken", 409)
