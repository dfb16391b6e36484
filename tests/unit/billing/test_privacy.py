"""Billing's part of privacy requests: the export, the erasure (credit data
deleted, payment records pseudonymised, counted per table), no credit held
while an erasure is pending, and the schedule, from its settings."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import timedelta

from sqlalchemy import func, select

from services.billing import ledger, models, orders, plans, saga
from services.billing import privacy as billing_privacy
from services.billing.payments import webhooks
from services.billing.settings import BillingSettings
from services.common.ids import pseudonym
from tests.fakes.stripe import signed_body
from tests.unit.billing.audit_helpers import assert_clean
from tests.unit.billing.conftest import NOW

SECRET = "whsec_test_secret"


def count(db, model, *where) -> int:
    return db.scalar(select(func.count()).select_from(model).where(*where))


def paid_user(db, events):
    """A user with a paid pack, a captured job and an open hold; and a bystander."""
    settings = BillingSettings(stripe_webhook_secrets=(SECRET,), pseudonym_key="k" * 32)
    user, bystander = uuid.uuid4(), uuid.uuid4()
    for who in (user, bystander):
        plans.open_account(db, settings, who, NOW, events)
    db.commit()
    order, _ = orders.begin_checkout(db, settings, user, {"pack_id": "small"}, None, NOW, events)
    orders.attach_session(db, order.id, "cs_test_1", "https://checkout.test/1")
    db.commit()
    session = {"id": "cs_test_1", "amount_total": 500, "currency": "usd",
               "payment_status": "paid", "payment_intent": "pi_test_1",
               "metadata": {"order_id": str(order.id)}}
    body, header = signed_body({"id": "evt_1", "type": "checkout.session.completed",
                                "data": {"object": session}}, SECRET, int(NOW.timestamp()))
    webhooks.handle(db, settings, body, header, NOW, events)
    db.commit()
    for price, outcome in ((5, "succeeded"), (7, None)):
        job = uuid.uuid4()
        saga.job_requested(db, settings, {"job_id": job, "user_id": user, "attempt": 1,
                                          "type": "text-to-image", "price": price}, NOW, events)
        if outcome:
            saga.job_finished(db, {"job_id": job, "user_id": user, "attempt": 1}, outcome,
                              NOW, events)
        db.commit()
    return settings, user, bystander, order


def test_export_holds_everything_and_says_what_is_kept(db, events):
    settings, user, _, order = paid_user(db, events)
    exported = billing_privacy.export(db, settings, user)
    json.dumps(exported)  # JSON-able as it is
    assert exported["account"]["available"] == 138 and exported["account"]["held"] == 7
    assert [e["kind"] for e in exported["ledger"]] == ["grant", "purchase", "hold", "capture",
                                                       "hold"]
    assert len(exported["lots"]) == 2 and len(exported["holds"]) == 2
    assert [o["id"] for o in exported["orders"]] == [str(order.id)]
    assert exported["payments"][0]["amount"] == 500
    assert "5 years" in exported["retention"] and "pseudonymised" in exported["retention"]
    assert "request_hash" not in exported["orders"][0]


def test_erasure_deletes_credits_and_pseudonymises_payments_once(db, events):
    settings, user, bystander, order = paid_user(db, events)
    erased = billing_privacy.erase(db, settings, user, NOW)
    db.commit()
    # 1 account, 5 entries, 2 holds, 2 lots, 4 lot movements (grant, purchase, 2 holds)
    expected_deleted = 1 + 5 + 2 + 2 + 4
    assert (sum(erased.tables.values()), erased.rows_pseudonymised) == (expected_deleted, 2)
    for model in (models.Account, models.LedgerEntry, models.Lot, models.LotMovement, models.Hold):
        assert count(db, model, model.user_id == user) == 0
    alias = "psn:" + hmac.new(b"k" * 32, str(user).encode(), hashlib.sha256).hexdigest()
    assert pseudonym(settings.pseudonym_key.encode(), user) == alias
    order = db.get(models.Order, order.id, populate_existing=True)
    payment = db.scalars(select(models.Payment)).one()
    assert order.user_ref == payment.user_ref == alias
    assert order.pseudonymised_at == payment.pseudonymised_at == NOW
    assert payment.retain_until == NOW.replace(year=NOW.year + 5)
    assert db.get(models.ErasedAccount, alias) is not None
    left = billing_privacy.export(db, settings, user)
    assert str(user) not in json.dumps({k: v for k, v in left.items() if k != "user_id"})
    assert left["orders"] == left["payments"] == left["ledger"] == []
    # idempotent, and the bystander untouched
    again = billing_privacy.erase(db, settings, user, NOW)
    assert (sum(again.tables.values()), again.rows_pseudonymised) == (0, 0)
    assert db.get(models.Account, bystander).available == 50
    assert_clean(db)


def test_late_events_for_an_erased_user_change_nothing(db, events):
    settings, user, _, _ = paid_user(db, events)
    billing_privacy.erase(db, settings, user, NOW)
    db.commit()
    events.clear()
    job = uuid.uuid4()
    assert saga.job_requested(db, settings, {"job_id": job, "user_id": user, "attempt": 1,
                                             "type": "text-to-image", "price": 1},
                              NOW, events) == "insufficient"
    assert saga.job_finished(db, {"job_id": job, "user_id": user, "attempt": 1}, "succeeded",
                             NOW, events) == "no_hold"
    db.commit()
    assert count(db, models.LedgerEntry, models.LedgerEntry.user_id == user) == 0
    assert [kind for kind, _ in events.seen] == ["credits_insufficient"]


def test_the_erasure_is_counted_per_table(db, events):
    settings, user, bystander, _ = paid_user(db, events)
    erased = billing_privacy.erase(db, settings, user, NOW)
    db.commit()
    assert erased.tables == {"lot_movements": 4, "ledger_entries": 5, "lots": 2, "holds": 2,
                             "accounts": 1, "erasure_pending": 0, "subscriptions": 0}
    assert erased.rows_pseudonymised == 2  # an order and its payment
    again = billing_privacy.erase(db, settings, user, NOW)
    assert set(again.tables.values()) == {0} and again.rows_pseudonymised == 0
    assert billing_privacy.export(db, settings, bystander)["account"] is not None


def test_the_schedule_lists_payment_records_and_each_plans_retention():
    settings = BillingSettings(payment_retention_years=10)
    items = billing_privacy.retention_items(settings)
    assert items[0]["data"] == "orders and payment records" and items[0]["days"] == 3650
    plans = {i["data"]: i["days"] for i in items[2:-1]}
    assert plans == {f"uploads and generated outputs of accounts on the {p.name} plan":
                     p.retention_days for p in settings.plans.values()}
    assert items[-1]["data"].startswith("plan subscriptions") and items[-1]["days"] is None


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
    assert billing_privacy.erase(db, settings, user, NOW).tables["erasure_pending"] == 1
    db.commit()
    assert not billing_privacy.erasure_pending(db, user)
