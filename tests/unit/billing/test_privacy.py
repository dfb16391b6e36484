"""Billing's part of privacy: the erasure counted per table (credit data
deleted, payment records pseudonymised), no credit held while an erasure is
pending, and the schedule, from its settings."""

from __future__ import annotations

import uuid
from datetime import timedelta

from services.billing import ledger, retention
from services.billing import privacy as billing_privacy
from services.billing.settings import BillingSettings
from tests.unit.billing.conftest import NOW
from tests.unit.billing.test_retention import paid_user


def test_the_erasure_is_counted_per_table(db, events):
    settings, user, bystander, _ = paid_user(db, events)
    deleted, pseudonymised = retention.erase_user_tables(db, settings, user, NOW)
    db.commit()
    assert deleted == {"lot_movements": 4, "ledger_entries": 5, "lots": 2, "holds": 2,
                       "accounts": 1}
    assert pseudonymised == {"orders": 1, "payments": 1}
    again = retention.erase_user_tables(db, settings, user, NOW)
    assert set(again[0].values()) == {0} and set(again[1].values()) == {0}
    assert retention.export_user(db, settings, bystander)["account"] is not None


def test_the_schedule_lists_payment_records_and_each_plans_retention():
    settings = BillingSettings(payment_retention_years=10)
    items = retention.retention_items(settings)
    assert items[0]["data"] == "orders and payment records" and items[0]["days"] == 3650
    plans = {i["data"]: i["days"] for i in items[2:]}
    assert plans == {f"uploads and generated outputs of accounts on the {p.name} plan":
                     p.retention_days for p in settings.plans.values()}


def hold_request(user, price=3) -> dict:
    return {"job_id": uuid.uuid4(), "user_id": user, "attempt": 1, "type": "text-to-image",
            "price": price}


def test_no_credit_is_held_while_an_erasure_is_pending(db, events):
    settings, user, bystander, _ = paid_user(db, events)
    available = ledger.lock_account(db, user).available
    db.commit()
    assert billing_privacy.apply_erasure_pending(db, user, True, NOW)
    db.commit()
    events.clear()
    assert billing_privacy.job_requested(db, settings, hold_request(user), NOW,
                                         events) == "erasure_pending"
    db.commit()
    (refused,) = events.of("credits_insufficient")
    assert (refused["required"], refused["available"]) == (3, 0)
    assert events.of("credits_reserved") == []
    assert ledger.lock_account(db, user).available == available  # nothing spent
    # other accounts are not concerned
    assert billing_privacy.job_requested(db, settings, hold_request(bystander), NOW,
                                         events) == "reserved"
    # an older cancellation arriving late changes nothing; a newer one allows holds again
    later = NOW + timedelta(seconds=1)
    assert billing_privacy.apply_erasure_pending(db, user, False, NOW - timedelta(seconds=1)) \
        is False
    assert billing_privacy.apply_erasure_pending(db, user, False, later)
    assert billing_privacy.job_requested(db, settings, hold_request(user), later,
                                         events) == "reserved"


def test_the_erasure_deletes_the_pending_record(db, events):
    settings, user, _, _ = paid_user(db, events)
    billing_privacy.apply_erasure_pending(db, user, True, NOW)
    db.commit()
    assert billing_privacy.erase(db, user) == {"erasure_pending": 1}
    db.commit()
    assert not billing_privacy.erasure_pending(db, user)
