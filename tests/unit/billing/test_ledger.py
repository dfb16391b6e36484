"""Ledger arithmetic on SQLite: holds, captures, releases, lots, expiry,
adjustments, idempotency, and the audit that checks it all."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select, update

from services.billing import audit, ledger, plans, saga
from services.billing.models import Account, Hold, LedgerEntry, Lot, LotMovement
from services.common.errors import DomainError
from tests.unit.billing.conftest import NOW


def balance(db, user) -> tuple[int, int]:
    account = db.get(Account, user, populate_existing=True)
    return account.available, account.held


def entries(db, user, kind=None) -> list[LedgerEntry]:
    stmt = select(LedgerEntry).where(LedgerEntry.user_id == user).order_by(LedgerEntry.seq)
    if kind:
        stmt = stmt.where(LedgerEntry.kind == kind)
    return list(db.scalars(stmt))


def request(db, settings, events, user, price, job=None, attempt=1, now=NOW) -> tuple[str, uuid.UUID]:
    job = job or uuid.uuid4()
    status = saga.job_requested(db, settings, {"job_id": job, "user_id": user, "attempt": attempt,
                                               "type": "text-to-image", "price": price},
                                now, events)
    db.commit()
    return status, job


def finish(db, events, user, job, outcome, attempt=1, now=NOW) -> str:
    status = saga.job_finished(db, {"job_id": job, "user_id": user, "attempt": attempt},
                               outcome, now, events)
    db.commit()
    return status


def add_lot(db, user, credits, expires_at, key, now=NOW):
    account = ledger.lock_account(db, user)
    entry, _ = ledger.credit(db, account, kind="grant", key=key, credits=credits, now=now,
                             expires_at=expires_at)
    db.commit()
    return db.get(Lot, entry.lot_id)


def clean(db):
    result = audit.verify_ledger(db)
    assert result["problems"] == []
    return result


# ---------------------------------------------------------------- the saga


def test_an_account_opens_with_the_signup_grant_once(db, settings, events, user):
    assert balance(db, user) == (50, 0)
    [grant] = entries(db, user)
    assert (grant.kind, grant.amount, grant.balance_after, grant.seq) == ("grant", 50, 50, 1)
    assert grant.idempotency_key == f"grant:signup:{user}"
    assert grant.expires_at == NOW + timedelta(days=30)
    assert plans.open_account(db, settings, user, NOW, events) is not None
    db.commit()
    assert len(entries(db, user)) == 1
    [changed] = events.of("plan_changed")
    assert (changed["plan"], changed["retention_days"]) == ("free", 30)
    clean(db)


def test_reserve_then_capture(db, settings, events, user):
    status, job = request(db, settings, events, user, 12)
    assert status == "reserved"
    assert balance(db, user) == (38, 12)
    [reserved] = events.of("credits_reserved")
    assert (reserved["amount"], reserved["plan"], reserved["priority"]) == (12, "free", 0)
    assert finish(db, events, user, job, "succeeded") == "captured"
    assert balance(db, user) == (38, 0)
    [captured] = events.of("credits_captured")
    assert captured["amount"] == 12
    hold, capture = entries(db, user)[1:]
    assert (hold.amount, hold.held_change, hold.balance_after, hold.held_after) == (-12, 12, 38, 12)
    assert (capture.amount, capture.held_change, capture.balance_after, capture.held_after) == \
        (0, -12, 38, 0)
    assert capture.idempotency_key == f"job:{job}:1:capture"
    clean(db)


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
def test_reserve_then_release_gives_the_credits_back(db, settings, events, user, outcome):
    _, job = request(db, settings, events, user, 20)
    assert finish(db, events, user, job, outcome) == "released"
    assert balance(db, user) == (50, 0)
    [released] = events.of("credits_released")
    assert (released["amount"], released["reason"]) == (20, outcome)
    lot = db.scalars(select(Lot).where(Lot.user_id == user)).one()
    assert lot.remaining == 50
    clean(db)


def test_insufficient_credits_write_nothing(db, settings, events, user):
    status, job = request(db, settings, events, user, 51)
    assert status == "insufficient"
    assert balance(db, user) == (50, 0)
    assert len(entries(db, user)) == 1
    [short] = events.of("credits_insufficient")
    assert (short["required"], short["available"]) == (51, 50)
    assert db.scalar(select(func.count()).select_from(Hold)) == 0
    # succeeded/failed for a job that never had a hold do nothing
    assert finish(db, events, user, job, "succeeded") == "no_hold"
    assert finish(db, events, user, job, "failed") == "no_hold"
    assert len(entries(db, user)) == 1
    assert not events.of("credits_captured") and not events.of("credits_released")


def test_a_price_of_zero_reserves_zero(db, settings, events, user):
    status, job = request(db, settings, events, user, 0)
    assert status == "reserved"
    assert events.of("credits_reserved")[0]["amount"] == 0
    assert finish(db, events, user, job, "succeeded") == "captured"
    assert balance(db, user) == (50, 0)
    clean(db)


def test_duplicates_write_one_entry_and_publish_once(db, settings, events, user):
    _, job = request(db, settings, events, user, 5)
    assert request(db, settings, events, user, 5, job=job)[0] == "duplicate"
    assert finish(db, events, user, job, "succeeded") == "captured"
    assert finish(db, events, user, job, "succeeded") == "duplicate"
    assert [e.kind for e in entries(db, user)] == ["grant", "hold", "capture"]
    assert len(events.of("credits_reserved")) == 1
    assert len(events.of("credits_captured")) == 1
    clean(db)


def test_capture_after_release_and_release_after_capture_are_refused(db, settings, events, user):
    _, released_job = request(db, settings, events, user, 5)
    finish(db, events, user, released_job, "failed")
    assert finish(db, events, user, released_job, "succeeded") == "refused"
    _, captured_job = request(db, settings, events, user, 7)
    finish(db, events, user, captured_job, "succeeded")
    assert finish(db, events, user, captured_job, "cancelled") == "refused"
    assert [e.kind for e in entries(db, user)] == ["grant", "hold", "release", "hold", "capture"]
    assert balance(db, user) == (43, 0)
    clean(db)


def test_a_replayed_job_is_a_new_attempt_captured_once(db, settings, events, user):
    _, job = request(db, settings, events, user, 10, attempt=1)
    finish(db, events, user, job, "failed", attempt=1)
    assert request(db, settings, events, user, 10, job=job, attempt=2)[0] == "reserved"
    assert finish(db, events, user, job, "succeeded", attempt=2) == "captured"
    assert finish(db, events, user, job, "succeeded", attempt=1) == "refused"
    assert balance(db, user) == (40, 0)
    assert len(entries(db, user, "capture")) == 1
    clean(db)


def test_capture_for_another_users_job_is_not_applied(db, settings, events, user):
    _, job = request(db, settings, events, user, 10)
    stranger = uuid.uuid4()
    plans.open_account(db, settings, stranger, NOW, events)
    db.commit()
    assert finish(db, events, stranger, job, "succeeded") == "no_hold"
    assert balance(db, user) == (40, 10)


def test_holds_never_overdraw(db, settings, events, user):
    results = [request(db, settings, events, user, 15)[0] for _ in range(5)]
    assert results == ["reserved"] * 3 + ["insufficient"] * 2
    assert balance(db, user) == (5, 45)
    clean(db)


def test_stale_holds_are_released_as_expired(db, settings, events, user, maintain):
    _, old = request(db, settings, events, user, 10, now=NOW - timedelta(hours=7))
    _, fresh = request(db, settings, events, user, 10, now=NOW - timedelta(hours=1))
    assert maintain("holds", NOW) == 1
    assert maintain("holds", NOW) == 0
    [released] = events.of("credits_released")
    assert (released["job_id"], released["reason"]) == (str(old), "expired")
    assert db.scalars(select(Hold).where(Hold.job_id == old)).one().release_reason == "expired"
    assert finish(db, events, user, fresh, "succeeded") == "captured"
    assert balance(db, user) == (40, 0)
    clean(db)


def test_a_success_after_the_hold_expired_is_still_paid_for(db, settings, events, user, maintain):
    """The success was sent just before the expiry and arrived after it: the
    price is taken from the available credits (the job is not free), once."""
    _, old = request(db, settings, events, user, 10, now=NOW - timedelta(hours=7))
    maintain("holds", NOW)
    assert balance(db, user) == (50, 0)
    assert finish(db, events, user, old, "succeeded") == "captured"
    assert finish(db, events, user, old, "succeeded") == "duplicate"
    assert finish(db, events, user, old, "failed") == "duplicate"
    assert balance(db, user) == (40, 0)
    [late] = entries(db, user, "capture")
    assert (late.amount, late.held_change, late.hold_id, late.job_id) == (-10, 0, None, old)
    assert [e["amount"] for e in events.of("credits_captured")] == [10]
    assert db.scalars(select(Hold).where(Hold.job_id == old)).one().status == "released"
    clean(db)
    # never below zero: with 5 left, a late success of 8 takes the 5
    _, other = request(db, settings, events, user, 8, now=NOW - timedelta(hours=7))
    maintain("holds", NOW)
    _, spend = request(db, settings, events, user, 35)
    finish(db, events, user, spend, "succeeded")
    assert balance(db, user) == (5, 0)
    assert finish(db, events, user, other, "succeeded") == "captured"
    assert balance(db, user) == (0, 0)
    clean(db)


# ---------------------------------------------------------------- lots


def test_holds_draw_from_the_lots_expiring_first(db, settings, events, user):
    signup = db.scalars(select(Lot).where(Lot.user_id == user)).one()  # expires NOW + 30 d
    never = add_lot(db, user, 100, None, "test:never")
    soon = add_lot(db, user, 10, NOW + timedelta(days=2), "test:soon")
    later = add_lot(db, user, 10, NOW + timedelta(days=60), "test:later")
    _, job = request(db, settings, events, user, 65)
    hold = entries(db, user, "hold")[0]
    taken = dict(db.execute(select(LotMovement.lot_id, LotMovement.amount)
                            .where(LotMovement.entry_id == hold.id)).all())
    assert taken == {soon.id: -10, signup.id: -50, later.id: -5}
    assert never.id not in taken
    finish(db, events, user, job, "failed")
    for lot, credits in ((soon, 10), (signup, 50), (later, 10), (never, 100)):
        db.refresh(lot)
        assert lot.remaining == credits
    clean(db)


def test_expired_lots_become_expire_entries_once(db, settings, events, user, maintain):
    add_lot(db, user, 30, None, "test:never")
    later = NOW + timedelta(days=31)  # the signup grant has expired
    assert ledger.expired_unsettled(db, user, later) == 50
    assert maintain("lots", later) == 1
    assert maintain("lots", later) == 0
    [expire] = entries(db, user, "expire")
    assert (expire.amount, expire.balance_after) == (-50, 30)
    assert balance(db, user) == (30, 0)
    assert ledger.expired_unsettled(db, user, later) == 0
    clean(db)


def test_a_hold_never_counts_expired_credits(db, settings, events, user):
    later = NOW + timedelta(days=31)
    status, _ = request(db, settings, events, user, 10, now=later)
    assert status == "insufficient"
    assert events.of("credits_insufficient")[0]["available"] == 0
    assert [e.kind for e in entries(db, user)] == ["grant", "expire"]
    clean(db)


def test_credits_released_into_an_expired_lot_expire_again(db, settings, events, user, maintain):
    _, job = request(db, settings, events, user, 20)  # from the signup lot
    later = NOW + timedelta(days=31)
    assert maintain("lots", later) == 1  # the 30 left
    finish(db, events, user, job, "failed", now=later)  # 20 back into the expired lot
    assert maintain("lots", later) == 1
    keys = [e.idempotency_key for e in entries(db, user, "expire")]
    assert len(keys) == 2 and keys[0].endswith(":expire:1") and keys[1].endswith(":expire:2")
    assert balance(db, user) == (0, 0)
    clean(db)


# ---------------------------------------------------------------- adjustments


def test_adjustments_are_idempotent_and_never_overdraw(db, settings, events, user):
    account = ledger.lock_account(db, user)
    entry, created = ledger.adjust(db, account, 25, "goodwill", "ticket-1", NOW)
    db.commit()
    assert created and entry.kind == "adjustment" and entry.balance_after == 75
    account = ledger.lock_account(db, user)
    again, created = ledger.adjust(db, account, 25, "goodwill", "ticket-1", NOW)
    assert not created and again.id == entry.id
    with pytest.raises(DomainError) as info:
        ledger.adjust(db, account, 30, "goodwill", "ticket-1", NOW)
    assert (info.value.code, info.value.status) == ("idempotency_key_reused", 409)
    with pytest.raises(DomainError) as info:
        ledger.adjust(db, account, -76, "chargeback", "ticket-2", NOW)
    assert (info.value.code, info.value.status) == ("insufficient_credits", 402)
    db.rollback()
    account = ledger.lock_account(db, user)
    ledger.adjust(db, account, -60, "chargeback", "ticket-3", NOW)
    db.commit()
    assert balance(db, user) == (15, 0)
    clean(db)


def test_ledger_pages_newest_first_by_sequence(db, settings, events, user):
    for _ in range(4):
        _, job = request(db, settings, events, user, 1)
        finish(db, events, user, job, "succeeded")
    seen, cursor = [], None
    while True:
        rows, cursor = ledger.list_entries(db, user, 3, cursor)
        seen += [r.seq for r in rows]
        if cursor is None:
            break
    assert seen == list(range(9, 0, -1))
    with pytest.raises(DomainError) as info:
        ledger.list_entries(db, user, 3, "not-a-cursor")
    assert info.value.code == "invalid_request"


# ---------------------------------------------------------------- the audit


@pytest.fixture
def busy(db, settings, events, user):
    """A user with captures, a release, an open hold and an adjustment."""
    for outcome in ("succeeded", "failed", None):
        _, job = request(db, settings, events, user, 6)
        if outcome:
            finish(db, events, user, job, outcome)
    account = ledger.lock_account(db, user)
    ledger.adjust(db, account, 9, "goodwill", "k", NOW)
    db.commit()
    assert clean(db)["accounts_checked"] == 1
    return user


def problems(db, user=None) -> set[str]:
    return {p["problem"].split(":")[0] for p in audit.verify_ledger(db, user)["problems"]}


def test_audit_finds_a_cached_balance_that_disagrees(db, busy):
    db.execute(update(Account).where(Account.user_id == busy).values(available=Account.available + 1))
    db.commit()
    assert problems(db, busy) == {"available_mismatch", "available_vs_lots"}


def test_audit_finds_an_edited_entry(db, busy):
    entry = entries(db, busy, "capture")[0]
    db.execute(update(LedgerEntry).where(LedgerEntry.id == entry.id).values(held_change=-5))
    db.commit()
    assert {"held_mismatch", "held_after_chain", "hold_close_amount_mismatch"} <= problems(db)


def test_audit_finds_a_deleted_entry(db, busy):
    release = entries(db, busy, "release")[0]
    db.execute(LedgerEntry.__table__.delete().where(LedgerEntry.id == release.id))
    db.commit()
    found = problems(db)
    assert {"available_mismatch", "held_mismatch", "seq_gap", "balance_after_chain",
            "hold_status_mismatch"} <= found


def test_audit_finds_a_lot_that_disagrees_with_its_movements(db, busy):
    db.execute(update(Lot).where(Lot.user_id == busy, Lot.source == "grant")
               .values(remaining=Lot.remaining + 3))
    db.commit()
    assert problems(db) == {"lot_remaining_mismatch", "available_vs_lots"}


def test_audit_finds_a_hold_without_its_entry_and_an_orphan(db, busy):
    hold = db.scalars(select(Hold).where(Hold.status == "open")).one()
    db.execute(update(Hold).where(Hold.id == hold.id).values(amount=hold.amount + 1))
    db.execute(update(LedgerEntry).where(LedgerEntry.kind == "grant")
               .values(user_id=uuid.uuid4()))
    db.commit()
    found = problems(db)
    assert {"hold_without_entry", "held_vs_open_holds", "orphan_entries"} <= found


def test_an_account_is_locked_once_per_transaction(db, user):
    """A second lock in the same transaction (an event's claim, then the
    saga's step) answers from the session; the next transaction locks again."""
    statements = []
    listen = lambda *args: statements.append(args[2])  # noqa: E731  (before_cursor_execute)
    event.listen(db.get_bind(), "before_cursor_execute", listen)
    try:
        first = ledger.lock_account(db, str(user))
        locked = len(statements)
        assert locked >= 1 and first is not None
        assert ledger.lock_account(db, user) is first
        assert len(statements) == locked  # no statement: the lock is held
        db.commit()
        again = ledger.lock_account(db, user)
        assert again is not None and len(statements) == 2 * locked  # a new transaction
        db.rollback()
        ledger.lock_account(db, user)
        assert len(statements) == 3 * locked  # after a rollback too
        db.rollback()
        assert ledger.lock_account(db, uuid.uuid4()) is None  # no account: nothing held
        assert ledger.lock_account(db, uuid.uuid4()) is None
    finally:
        event.remove(db.get_bind(), "before_cursor_execute", listen)
