"""Export, erasure with pseudonymised payment records, and their retention."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import timedelta

from sqlalchemy import func, select

from services.billing import orders, plans, retention, saga
from services.billing.models import (
    Account,
    ErasedAccount,
    Hold,
    LedgerEntry,
    Lot,
    LotMovement,
    Order,
    Payment,
)
from services.billing.payments import webhooks
from services.billing.settings import BillingSettings
from tests.fakes.stripe import FakeStripe, signed_body
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
    exported = retention.export_user(db, settings, user)
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
    counts = retention.erase_user(db, settings, user, NOW)
    db.commit()
    # 1 account, 5 entries, 2 holds, 2 lots, 4 lot movements (grant, purchase, 2 holds)
    expected_deleted = 1 + 5 + 2 + 2 + 4
    assert counts == {"rows_deleted": expected_deleted, "rows_pseudonymised": 2}
    for model in (Account, LedgerEntry, Lot, LotMovement, Hold):
        assert count(db, model, model.user_id == user) == 0
    alias = "psn:" + hmac.new(b"k" * 32, str(user).encode(), hashlib.sha256).hexdigest()
    assert retention.pseudonym(settings, user) == alias
    order = db.get(Order, order.id, populate_existing=True)
    payment = db.scalars(select(Payment)).one()
    assert order.user_ref == payment.user_ref == alias
    assert order.pseudonymised_at == payment.pseudonymised_at == NOW
    assert payment.retain_until == NOW.replace(year=NOW.year + 5)
    assert db.get(ErasedAccount, alias) is not None
    left = retention.export_user(db, settings, user)
    assert str(user) not in json.dumps({k: v for k, v in left.items() if k != "user_id"})
    assert left["orders"] == left["payments"] == left["ledger"] == []
    # idempotent, and the bystander untouched
    assert retention.erase_user(db, settings, user, NOW) == {"rows_deleted": 0,
                                                             "rows_pseudonymised": 0}
    assert db.get(Account, bystander).available == 50
    assert_clean(db)


def test_late_events_for_an_erased_user_change_nothing(db, events):
    settings, user, _, _ = paid_user(db, events)
    retention.erase_user(db, settings, user, NOW)
    db.commit()
    events.clear()
    job = uuid.uuid4()
    assert saga.job_requested(db, settings, {"job_id": job, "user_id": user, "attempt": 1,
                                             "type": "text-to-image", "price": 1},
                              NOW, events) == "insufficient"
    assert saga.job_finished(db, {"job_id": job, "user_id": user, "attempt": 1}, "succeeded",
                             NOW, events) == "no_hold"
    db.commit()
    assert count(db, LedgerEntry, LedgerEntry.user_id == user) == 0
    assert [kind for kind, _ in events.seen] == ["credits_insufficient"]


def test_payment_records_are_deleted_only_after_their_retention(db, events):
    settings, user, _, order = paid_user(db, events)
    order_id = order.id
    retention.erase_user(db, settings, user, NOW)
    db.commit()
    almost = NOW.replace(year=NOW.year + 5) - timedelta(seconds=1)
    assert retention.purge_payment_records(db, settings, almost) == {"payments": 0, "orders": 0}
    after = NOW.replace(year=NOW.year + 5)
    assert retention.purge_payment_records(db, settings, after) == {"payments": 1, "orders": 1}
    db.commit()
    assert db.get(Order, order_id) is None


def test_the_fake_stripe_session_feeds_the_same_path(db, events):
    """The fake's sessions carry what fulfil checks (order reference, amount)."""
    settings = BillingSettings(stripe_webhook_secrets=(SECRET,))
    user = uuid.uuid4()
    plans.open_account(db, settings, user, NOW, events)
    db.commit()
    with FakeStripe() as stripe:
        from services.billing.payments.stripe import StripeClient

        order, _ = orders.begin_checkout(db, settings, user, {"pack_id": "large"}, None, NOW,
                                         events)
        db.commit()
        session = StripeClient(stripe.api_base, stripe.secret_key, 5).create_checkout_session(
            order_id=str(order.id), name=order.description, amount=order.amount,
            currency=order.currency, success_url="https://a/", cancel_url="https://a/")
        orders.attach_session(db, order.id, session.id, session.url)
        db.commit()
        assert stripe.session_for_order(order.id)["amount_total"] == 4000
        body, header = stripe.webhook(stripe.checkout_completed(session.id), SECRET,
                                      int(NOW.timestamp()))
    webhooks.handle(db, settings, body, header, NOW, events)
    db.commit()
    assert db.get(Account, user).available == 1050
