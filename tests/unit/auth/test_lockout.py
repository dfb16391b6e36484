from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from services.auth import lockout
from services.auth.models import Throttle
from services.common.errors import DomainError


def attempts(db) -> dict[str, int]:
    return {t.subject: t.attempts for t in db.scalars(select(Throttle))}


def refusal(db, subjects, now) -> DomainError:
    with pytest.raises(DomainError) as info:
        lockout.take_attempt(db, subjects, now)
    db.rollback()  # as the service does with a refusal
    return info.value


def fail(db, subjects, now) -> bool:
    """One failed attempt, as a login makes it: taken, committed, then recorded."""
    lockout.take_attempt(db, subjects, now)
    db.commit()
    locked = lockout.record_failure(db, subjects, now)
    db.commit()
    return locked


def test_subjects_are_the_account_and_a_valid_address(settings):
    with_address = lockout.subjects_for(settings, "a@example.com", "203.0.113.9")
    assert [s.max_attempts for s in with_address] == [3, 5]
    assert "a@example.com" not in with_address[0].key  # stored as an HMAC
    assert lockout.subjects_for(settings, "a@example.com", "junk") == with_address[:1]
    assert lockout.subjects_for(settings, "a@example.com", None) == with_address[:1]
    # the same address spelled differently is the same subject
    mapped = lockout.subjects_for(settings, "b@example.com", "::ffff:203.0.113.9")
    assert mapped[1] == with_address[1]


def test_the_nth_failure_in_the_window_locks_the_account(db, settings, now):
    subjects = lockout.subjects_for(settings, "a@example.com", None)
    for i in range(2):
        assert not fail(db, subjects, now + timedelta(seconds=i))
    assert fail(db, subjects, now + timedelta(seconds=2))
    error = refusal(db, subjects, now + timedelta(seconds=2))
    assert (error.code, error.status) == ("rate_limited", 429)
    assert error.details["retry_after"] == 300
    assert refusal(db, subjects, now + timedelta(seconds=200)).details["retry_after"] == 102
    # the lock ends after LOGIN_LOCKOUT_SECONDS and the count starts afresh
    after = now + timedelta(seconds=303)
    assert not fail(db, subjects, after)
    assert list(attempts(db).values()) == [1]


def test_attempts_being_checked_use_the_budget_before_they_fail(db, settings, now):
    # Three attempts taken (their passwords still being checked): a fourth is
    # refused at once, before anything failed. This is what parallel guesses meet.
    subjects = lockout.subjects_for(settings, "a@example.com", None)
    for _ in range(3):
        lockout.take_attempt(db, subjects, now)
        db.commit()
    error = refusal(db, subjects, now + timedelta(seconds=10))
    assert error.code == "rate_limited" and error.details["retry_after"] == 590  # window's end


def test_failures_older_than_the_window_do_not_count(db, settings, now):
    subjects = lockout.subjects_for(settings, "a@example.com", None)
    fail(db, subjects, now)
    fail(db, subjects, now + timedelta(seconds=1))
    later = now + timedelta(seconds=600)  # window is 600 s
    assert not fail(db, subjects, later)
    assert list(attempts(db).values()) == [1]  # counting afresh from ``later``


def test_an_address_is_locked_across_accounts(db, settings, now):
    for i in range(5):
        fail(db, lockout.subjects_for(settings, f"user{i}@example.com", "198.51.100.4"), now)
    # a sixth account, never failed, from the same address
    fresh = lockout.subjects_for(settings, "new@example.com", "198.51.100.4")
    assert refusal(db, fresh, now).details["retry_after"] == 300
    assert attempts(db).get(fresh[0].key, 0) == 0  # the refusal took nothing from the account
    # the same account from elsewhere is not locked
    lockout.take_attempt(db, lockout.subjects_for(settings, "new@example.com", "10.0.0.1"), now)


def test_success_forgets_the_accounts_count_and_gives_the_address_its_attempt(
        db, settings, now):
    subjects = lockout.subjects_for(settings, "a@example.com", "198.51.100.4")
    fail(db, subjects, now)
    fail(db, subjects, now)
    lockout.take_attempt(db, subjects, now)
    lockout.succeeded(db, subjects)
    assert attempts(db) == {subjects[1].key: 2}  # the account's row is gone: it counts nothing
    lockout.give_back(db, subjects)
    assert attempts(db) == {subjects[1].key: 1}


def test_a_success_keeps_a_lock_that_began_while_it_was_being_checked(db, settings, now):
    subjects = lockout.subjects_for(settings, "a@example.com", None)
    lockout.take_attempt(db, subjects, now)  # the right password, being checked...
    db.commit()
    for _ in range(2):
        fail(db, subjects, now)  # ...while two wrong ones lock the account
    lockout.succeeded(db, subjects)
    db.commit()
    assert refusal(db, subjects, now).details["retry_after"] == 300


@pytest.mark.parametrize(("seconds", "expected"), [(0.2, 1), (1.0, 1), (1.01, 2), (899.5, 900)])
def test_retry_after_rounds_up_to_whole_seconds(seconds, expected):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert lockout.retry_after_seconds(now + timedelta(seconds=seconds), now) == expected
