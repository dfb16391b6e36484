"""The retention of payment records (deleted when their 5 years are over),
and the fake Stripe's sessions on the real payment path."""

from __future__ import annotations

import uuid
from datetime import timedelta

from services.billing import orders, plans, retention
from services.billing import privacy as billing_privacy
from services.billing.models import Account, Order
from services.billing.payments import webhooks
from services.billing.settings import BillingSettings
from tests.fakes.stripe import FakeStripe
from tests.unit.billing.conftest import NOW
from tests.unit.billing.test_privacy import SECRET, paid_user


def test_payment_records_are_deleted_only_after_their_retention(db, events):
    settings, user, _, order = paid_user(db, events)
    order_id = order.id
    billing_privacy.erase(db, settings, user, NOW)
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
