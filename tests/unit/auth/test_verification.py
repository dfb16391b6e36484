from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.auth import accounts, sessions, verification
from services.auth.errors import RecordedFailure, invalid_credentials
from services.auth.models import EmailVerification, User
from services.common.errors import DomainError

PASSWORD = "correct horse battery"


@pytest.fixture
def registered(db, settings, now):
    created = accounts.register(db, settings, "alice@example.com", PASSWORD, None, None, now)
    created.verification = dict(created.events)["email_verification_requested"]
    created.verification["code"] = code_of(settings, created.verification)
    return created


def code_of(settings, event: dict) -> str:
    """The code an auth.email_verification_requested payload carries sealed."""
    return settings.sealer.open(event["sealed_code"])


def error_of(callable_, *args) -> DomainError:
    with pytest.raises((DomainError, RecordedFailure)) as info:
        callable_(*args)
    error = info.value
    return error.error if isinstance(error, RecordedFailure) else error


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def change(db, settings, user, new_email, password, now) -> dict | None:
    """request_email_change as the service calls it (for a verified account,
    after an attempt was taken for the password)."""
    user.email_verified = True
    subjects = sessions.begin_login(db, settings, user.email, None, now)
    sessions.check_password(db, user, password, subjects, now, invalid_credentials(status=403))
    event = accounts.request_email_change(db, settings, user, new_email, now)
    if event is not None:
        event["code"] = code_of(settings, event)
    return event


def test_code_is_stored_only_as_an_hmac_and_sent_only_sealed(db, registered):
    row = db.scalar(select(EmailVerification))
    assert registered.verification["code"] not in row.code_hmac
    assert len(row.code_hmac) == 64
    assert registered.verification["purpose"] == "registration"
    assert registered.verification["code"] not in registered.verification["sealed_code"]


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
    new = code_of(settings, events[0])
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
    first = change(db, settings, user, "alice@new.example", PASSWORD, now)
    assert (first["email"], first["purpose"]) == ("alice@new.example", "email_change")
    # resending is asking again (authenticated, with the password)
    event = change(db, settings, user, "alice@new.example", PASSWORD, now + timedelta(minutes=2))
    changed = verification.verify(
        db, settings, "alice@new.example", event["code"], now + timedelta(minutes=3)
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
    event = change(db, settings, registered.user, "bob@example.com", PASSWORD, now)
    accounts.register(db, settings, "bob@example.com", PASSWORD, None, None, now)
    error = error_of(verification.verify, db, settings, "bob@example.com", event["code"], now)
    # bob's own registration code is a candidate too, but this code is the change's
    assert (error.code, error.status) == ("email_taken", 409)


def test_email_change_codes_to_one_address_are_rate_limited(db, settings, now, registered):
    user = registered.user
    assert change(db, settings, user, "new@example.com", PASSWORD, now)
    soon = now + timedelta(seconds=30)
    assert change(db, settings, user, "new@example.com", PASSWORD, soon) is None
    # a corrected address gets its code at once, and voids the first one
    other = change(db, settings, user, "newer@example.com", PASSWORD, soon)
    assert other["email"] == "newer@example.com"


def test_a_resend_reissues_only_the_addresss_own_registration_code(db, settings, now, registered):
    bob = accounts.register(db, settings, "bob@example.com", PASSWORD, None, None, now).user
    pending = change(db, settings, bob, "alice@new.example", PASSWORD, now)
    later = now + timedelta(hours=1)
    # a stranger asking for the new address renews nothing of bob's
    assert verification.resend(db, settings, "alice@new.example", later) == []
    assert verification.verify(db, settings, "alice@new.example", pending["code"],
                               now + timedelta(minutes=1)).id == bob.id
    # the unverified account's own address gets its own new code only
    events = verification.resend(db, settings, "alice@example.com", later)
    assert [(e["user_id"], e["purpose"]) for e in events] == [
        (str(registered.user.id), "registration")]


def test_email_change_needs_the_password_and_a_new_free_address(db, settings, now, registered):
    user = registered.user
    wrong_password = error_of(change, db, settings, user, "x@example.com", "bad", now)
    assert (wrong_password.code, wrong_password.status) == ("invalid_credentials", 403)
    same = error_of(change, db, settings, user, "alice@example.com", PASSWORD, now)
    assert same.code == "invalid_request"
    accounts.register(db, settings, "bob@example.com", PASSWORD, None, None, now)
    taken = error_of(change, db, settings, user, "bob@example.com", PASSWORD, now)
    assert (taken.code, taken.status) == ("email_taken", 409)


def test_an_address_has_one_budget_of_tries_across_accounts(db, settings, now):
    # Each new account moving to the address brings a fresh code with 5 tries
    # of its own; the address's budget (10) caps the guesses all the same.
    codes, tried, results = [], iter(f"{n:06d}" for n in range(10**6)), []
    for i in range(3):
        mover = accounts.register(db, settings, f"mover{i}@example.com", PASSWORD, None, None,
                                  now).user
        codes.append(change(db, settings, mover, "victim@example.com", PASSWORD, now)["code"])
        for _ in range(settings.verification_max_attempts):
            guess = next(g for g in tried if g not in codes)
            results.append(error_of(verification.verify, db, settings, "victim@example.com",
                                    guess, now))
    budget = settings.verification_max_attempts_per_address
    assert [e.code for e in results] == ["invalid_code"] * budget + ["rate_limited"] * (15 - budget)
    assert results[-1].status == 429 and results[-1].details["retry_after"] == 3600
    # even the right code waits for the window to end
    right = error_of(verification.verify, db, settings, "victim@example.com", codes[-1], now)
    assert right.code == "rate_limited"
    later = now + timedelta(seconds=3600)  # the window is over: only the code has run out
    assert error_of(verification.verify, db, settings, "victim@example.com", codes[-1],
                    later).code == "code_expired"


def test_an_account_has_one_live_code_per_address(db, settings, now, registered, monkeypatch):
    db.commit()
    user = registered.user
    live = EmailVerification(user_id=user.id, purpose="email_change", email="alice@example.com",
                             code_hmac="x" * 64, attempts=0, created_at=now, expires_at=now)
    db.add(live)
    with pytest.raises(IntegrityError):
        db.flush()  # a second live code for the same account and address
    db.rollback()
    # a request racing another one (which made the live code after this one
    # superseded the old codes) sends nothing rather than a second code
    user = db.scalar(select(User))
    monkeypatch.setattr(verification, "supersede", lambda *args, **kwargs: None)
    assert verification.issue(db, settings, user, verification.REGISTRATION,
                              "alice@example.com", now) is None
    assert len(db.scalars(select(EmailVerification)).all()) == 1
