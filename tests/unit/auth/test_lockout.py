from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from services.auth import lockout
from services.auth.models import LoginFailure
from services.common.errors import DomainError


def failures(db) -> int:
    return db.scalar(select(func.count()).select_from(LoginFailure))


def refusal(db, subjects, now) -> DomainError:
    with pytest.raises(DomainError) as info:
        lockout.ensure_not_locked(db, subjects, now)
    return info.value


def test_subjects_are_the_account_and_a_valid_address(settings):
    with_address = lockout.subjects_for(settings, "a@example.com", "203.0.113.9")
    assert [s.max_failures for s in with_address] == [3, 5]
    assert "a@example.com" not in with_address[0].key  # stored as an HMAC
    assert lockout.subjects_for(settings, "a@example.com", "junk") == with_address[:1]
    assert lockout.subjects_for(settings, "a@example.com", None) == with_address[:1]
    # the same address spelled differently is the same subject
    mapped = lockout.subjects_for(settings, "b@example.com", "::ffff:203.0.113.9")
    assert mapped[1] == with_address[1]


def test_the_nth_failure_in_the_window_locks_the_account(db, settings, now):
    subjects = lockout.subjects_for(settings, "a@example.com", None)
    for i in range(2):
        assert not lockout.record_failure(db, settings, subjects, now + timedelta(seconds=i))
        lockout.ensure_not_locked(db, subjects, now + timedelta(seconds=i))
    assert lockout.record_failure(db, settings, subjects, now + timedelta(seconds=2))
    error = refusal(db, subjects, now + timedelta(seconds=2))
    assert (error.code, error.status) == ("rate_limited", 429)
    assert error.details["retry_after"] == 300
    assert refusal(db, subjects, now + timedelta(seconds=200)).details["retry_after"] == 102
    # the lock ends after LOGIN_LOCKOUT_SECONDS and the count starts afresh
    after = now + timedelta(seconds=303)
    lockout.ensure_not_locked(db, subjects, after)
    assert failures(db) == 0
    assert not lockout.record_failure(db, settings, subjects, after)


def test_failures_older_than_the_window_do_not_count(db, settings, now):
    subjects = lockout.subjects_for(settings, "a@example.com", None)
    lockout.record_failure(db, settings, subjects, now)
    lockout.record_failure(db, settings, subjects, now + timedelta(seconds=1))
    later = now + timedelta(seconds=601)  # window is 600 s
    assert not lockout.record_failure(db, settings, subjects, later)
    lockout.ensure_not_locked(db, subjects, later)
    assert failures(db) == 1  # the expired ones were pruned


def test_an_address_is_locked_across_accounts(db, settings, now):
    for i in range(5):
        subjects = lockout.subjects_for(settings, f"user{i}@example.com", "198.51.100.4")
        lockout.record_failure(db, settings, subjects, now)
    # a sixth account, never failed, from the same address
    fresh = lockout.subjects_for(settings, "new@example.com", "198.51.100.4")
    assert refusal(db, fresh, now).details["retry_after"] == 300
    # the same account from elsewhere is not locked
    lockout.ensure_not_locked(db, lockout.subjects_for(settings, "new@example.com", "10.0.0.1"), now)


def test_success_clears_the_accounts_failures(db, settings, now):
    subjects = lockout.subjects_for(settings, "a@example.com", None)
    lockout.record_failure(db, settings, subjects, now)
    lockout.record_failure(db, settings, subjects, now)
    lockout.clear_failures(db, subjects[0])
    assert not lockout.record_failure(db, settings, subjects, now)
    assert failures(db) == 1


@pytest.mark.parametrize(("seconds", "expected"), [(0.2, 1), (1.0, 1), (1.01, 2), (899.5, 900)])
def test_retry_after_rounds_up_to_whole_seconds(seconds, expected):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert lockout.retry_after_seconds(now + timedelta(seconds=seconds), now) == expected
