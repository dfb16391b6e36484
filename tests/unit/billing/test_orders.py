"""Orders, the Stripe client (against the fake Stripe over HTTP) and webhook
handling: payment, refunds after partial spend, duplicates, mismatches."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from services.billing import audit, ledger, orders, saga
from services.billing.models import Account, Hold, LedgerEntry, Lot, Order, Payment, WebhookEvent
from services.billing.payments import webhooks
from services.billing.payments.stripe import PaymentProviderError, StripeClient
from services.common.errors import DomainError
from services.common.idempotency import request_hash
from tests.fakes.stripe import FakeStripe, charge_refunded, event, signed_body
from tests.unit.billing.audit_helpers import assert_clean
from tests.unit.billing.conftest import NOW

SECRET = "whsec_test_secret"


@pytest.fixture
def settings():
    from services.billing.settings import BillingSettings

    return BillingSettings(stripe_webhook_secrets=(SECRET,))


@pytest.fixture
def stripe():
    with FakeStripe() as fake:
        yield fake


def begin(db, settings, events, user, payload, key=None):
    order, needs = orders.begin_checkout(db, settings, user, payload, key, NOW, events)
    db.commit()
    return order, needs


def checkout(db, settings, events, stripe, user, payload, key=None) -> Order:
    """What the service does: order, Stripe session, attached."""
    order, needs = begin(db, settings, events, user, payload, key)
    if needs:
        client = StripeClient(stripe.api_base, stripe.secret_key, 5)
        session = client.create_checkout_session(
            order_id=str(order.id), name=order.description, amount=order.amount,
            currency=order.currency, success_url="https://app.test/ok",
            cancel_url="https://app.test/cancel")
        order = orders.attach_session(db, order.id, session.id, session.url)
        db.commit()
    return order


def deliver(db, settings, events, evt, secret=SECRET, now=NOW) -> dict:
    body, header = signed_body(evt, secret, int(now.timestamp()))
    result = webhooks.handle(db, settings, body, header, now, events)
    db.commit()
    return result


def balance(db, user):
    account = db.get(Account, user, populate_existing=True)
    return account.available, account.held


def refused(call, *args) -> DomainError:
    with pytest.raises(DomainError) as info:
        call(*args)
    return info.value


# ---------------------------------------------------------------- checkout


def test_checkout_validates_what_is_bought(db, settings, events, user):
    assert refused(begin, db, settings, events, user, {"pack_id": "huge"}).status == 404
    assert refused(begin, db, settings, events, user, {"plan_id": "gold"}).status == 404
    error = refused(begin, db, settings, events, user, {"plan_id": "free"})
    assert (error.code, error.status) == ("conflict", 409)
    db.rollback()
    order, needs = begin(db, settings, events, user, {"pack_id": "small"})
    assert needs and (order.status, order.kind, order.credits, order.amount, order.currency) == \
        ("pending", "pack", 100, 500, "usd")
    assert order.lot_expires_days == 365


def test_the_current_plan_cannot_be_bought_again(db, settings, events, user):
    account = db.get(Account, user)
    account.plan, account.plan_expires_at = "pro", NOW + timedelta(days=3)
    db.commit()
    error = refused(begin, db, settings, events, user, {"plan_id": "pro"})
    assert (error.code, error.status) == ("conflict", 409)
    db.rollback()
    order, _ = begin(db, settings, events, user, {"plan_id": "studio"})
    assert (order.kind, order.credits, order.amount) == ("plan", 2000, 4900)


def test_an_idempotency_key_returns_the_first_order(db, settings, events, stripe, user):
    first = checkout(db, settings, events, stripe, user, {"pack_id": "small"}, key="k1")
    again, needs = begin(db, settings, events, user, {"pack_id": "small"}, key="k1")
    assert not needs and again.id == first.id and again.checkout_url == first.checkout_url
    error = refused(begin, db, settings, events, user, {"pack_id": "large"}, "k1")
    assert (error.code, error.status) == ("idempotency_key_reused", 409)
    db.rollback()
    other_user = uuid.uuid4()
    theirs, needs = begin(db, settings, events, other_user, {"pack_id": "small"}, key="k1")
    assert needs and theirs.id != first.id
    assert len(stripe.sessions) == 1


def test_an_order_keyed_before_the_shared_request_hash_is_still_found(db, settings, events,
                                                                      stripe, user):
    """Orders stored the hash of ``json.dumps(body, sort_keys=True)``; new ones
    store ``services.common.idempotency.request_hash``. A retry after the
    upgrade of a request made before it finds its order; another body is
    still refused."""
    first = checkout(db, settings, events, stripe, user, {"pack_id": "small"}, key="k1")
    assert first.request_hash == request_hash({"pack_id": "small"})
    legacy = hashlib.sha256(b'{"pack_id": "small"}').hexdigest()
    assert legacy != first.request_hash
    db.get(Order, first.id).request_hash = legacy
    db.commit()
    again, needs = begin(db, settings, events, user, {"pack_id": "small"}, key="k1")
    assert not needs and again.id == first.id
    error = refused(begin, db, settings, events, user, {"pack_id": "large"}, "k1")
    assert (error.code, error.status) == ("idempotency_key_reused", 409)


def test_a_failed_order_is_retried_under_its_key(db, settings, events, user):
    order, _ = begin(db, settings, events, user, {"pack_id": "small"}, key="k2")
    orders.mark_failed(db, order.id, "stripe unreachable")
    db.commit()
    assert db.get(Order, order.id).status == "failed"
    again, needs = begin(db, settings, events, user, {"pack_id": "small"}, key="k2")
    assert needs and again.id == order.id and again.status == "pending"


def test_orders_that_can_no_longer_be_paid_fail(db, settings, events, stripe, user, maintain):
    stuck, _ = begin(db, settings, events, user, {"pack_id": "small"})
    open_session = checkout(db, settings, events, stripe, user, {"pack_id": "large"})
    assert maintain("orders", NOW + timedelta(minutes=16)) == 1
    assert db.get(Order, stuck.id, populate_existing=True).failure_reason == "no checkout session"
    assert db.get(Order, open_session.id).status == "pending"
    assert maintain("orders", NOW + timedelta(hours=26)) == 1
    assert db.get(Order, open_session.id, populate_existing=True).status == "failed"


# ---------------------------------------------------------------- the Stripe client


def test_the_client_posts_a_form_encoded_checkout_session(stripe):
    client = StripeClient(stripe.api_base, stripe.secret_key, 5)
    session = client.create_checkout_session(
        order_id="0190-order", name="100 credits", amount=500, currency="usd",
        success_url="https://app.test/ok?from=stripe", cancel_url="https://app.test/cancel")
    assert session.id.startswith("cs_test_") and session.url.startswith("https://")
    [sent] = stripe.requests
    assert sent.headers["Authorization"] == f"Bearer {stripe.secret_key}"
    assert sent.headers["Idempotency-Key"] == "order:0190-order"
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert sent.form == {
        "mode": "payment",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "500",
        "line_items[0][price_data][product_data][name]": "100 credits",
        "line_items[0][quantity]": "1",
        "success_url": "https://app.test/ok?from=stripe&order_id=0190-order",
        "cancel_url": "https://app.test/cancel?order_id=0190-order",
        "client_reference_id": "0190-order",
        "metadata[order_id]": "0190-order",
        "payment_intent_data[metadata][order_id]": "0190-order",
    }
    again = client.create_checkout_session(
        order_id="0190-order", name="100 credits", amount=500, currency="usd",
        success_url="https://app.test/ok", cancel_url="https://app.test/cancel")
    assert again == session and len(stripe.sessions) == 1


def test_the_client_reports_every_provider_failure(stripe):
    def create(client):
        return client.create_checkout_session(
            order_id="o", name="n", amount=1, currency="usd", success_url="https://a/",
            cancel_url="https://a/")

    with pytest.raises(PaymentProviderError, match="401"):
        create(StripeClient(stripe.api_base, "sk_test_wrong", 5))
    stripe.fail_next(503)
    with pytest.raises(PaymentProviderError, match="503"):
        create(StripeClient(stripe.api_base, stripe.secret_key, 5))
    stripe.delay_seconds = 1.0
    with pytest.raises(PaymentProviderError, match="unreachable"):
        create(StripeClient(stripe.api_base, stripe.secret_key, 0.2))
    stripe.delay_seconds = 0
    base = stripe.api_base
    stripe.stop()
    with pytest.raises(PaymentProviderError, match="unreachable"):
        create(StripeClient(base, stripe.secret_key, 2))


# ---------------------------------------------------------------- webhooks


def test_a_paid_pack_credits_a_lot_once(db, settings, events, stripe, user):
    order = checkout(db, settings, events, stripe, user, {"pack_id": "small"})
    evt = stripe.checkout_completed(order.provider_session_id)
    assert deliver(db, settings, events, evt) == {"received": True, "duplicate": False}
    assert deliver(db, settings, events, evt) == {"received": True, "duplicate": True}
    order = db.get(Order, order.id, populate_existing=True)
    assert (order.status, order.paid_at, order.payment_intent_id) == \
        ("paid", NOW, evt["data"]["object"]["payment_intent"])
    assert balance(db, user) == (150, 0)
    purchase = db.scalars(select(LedgerEntry).where(LedgerEntry.kind == "purchase")).one()
    assert purchase.idempotency_key == f"order:{order.id}:purchase"
    assert purchase.expires_at == NOW + timedelta(days=365)
    payment = db.scalars(select(Payment)).one()
    assert (payment.amount, payment.currency, payment.user_ref, payment.status) == \
        (500, "usd", str(user), "paid")
    assert payment.retain_until == NOW.replace(year=NOW.year + 5)
    [paid] = events.of("order_paid")
    assert (paid["kind"], paid["item_id"], paid["credits"], paid["amount"], paid["currency"]) == \
        ("pack", "small", 100, 500, "usd")
    # the same payment announced again by another event id changes nothing
    again = dict(evt, id="evt_test_other")
    deliver(db, settings, events, again)
    assert db.get(WebhookEvent, "evt_test_other").outcome == "already_paid"
    assert balance(db, user) == (150, 0)
    assert_clean(db)


@pytest.mark.parametrize("override, outcome", [
    ({"amount_total": 1}, "amount_mismatch"),
    ({"currency": "eur"}, "amount_mismatch"),
    ({"id": "cs_test_forged"}, "session_mismatch"),
    ({"payment_status": "unpaid"}, "not_paid_yet"),
])
def test_a_payment_that_does_not_match_its_order_pays_nothing(db, settings, events, stripe, user,
                                                               override, outcome):
    order = checkout(db, settings, events, stripe, user, {"pack_id": "small"})
    evt = stripe.checkout_completed(order.provider_session_id, **override)
    deliver(db, settings, events, evt)
    assert db.get(WebhookEvent, evt["id"]).outcome == outcome
    assert db.get(Order, order.id, populate_existing=True).status == "pending"
    assert balance(db, user) == (50, 0)
    assert not events.of("order_paid")


def test_unknown_event_types_are_received_and_ignored(db, settings, events, user):
    evt = event("customer.created", {"id": "cus_1"})
    assert deliver(db, settings, events, evt) == {"received": True, "duplicate": False}
    assert db.get(WebhookEvent, evt["id"]).outcome == "ignored"


def test_bad_signatures_record_nothing(db, settings, events, stripe, user):
    order = checkout(db, settings, events, stripe, user, {"pack_id": "small"})
    evt = stripe.checkout_completed(order.provider_session_id)
    error = refused(deliver, db, settings, events, evt, "whsec_wrong")
    assert error.code == "invalid_signature"
    db.rollback()
    assert db.get(WebhookEvent, evt["id"]) is None
    assert db.get(Order, order.id).status == "pending"


def spend(db, settings, events, user, credits) -> uuid.UUID:
    """Hold ``credits`` for a new job; returns the job's id."""
    job_id = uuid.uuid4()
    status = saga.job_requested(db, settings, {
        "job_id": job_id, "user_id": user, "attempt": 1, "type": "text-to-image",
        "price": credits}, NOW, events)
    db.commit()
    assert status == "reserved"
    return job_id


def test_a_refund_reverses_only_unspent_credits_of_the_order(db, settings, events, stripe, user):
    order = checkout(db, settings, events, stripe, user, {"pack_id": "small"})  # 100 for 500
    deliver(db, settings, events, stripe.checkout_completed(order.provider_session_id))
    # the pack lot expires last (365 days) so the signup credits go first: 50 + 30 of the pack
    spend(db, settings, events, user, 80)
    lot = db.scalars(select(Lot).where(Lot.order_id == order.id)).one()
    assert lot.remaining == 70
    # half refunded: 50 credits due, all unspent
    deliver(db, settings, events, stripe.charge_refunded(order.provider_session_id, 250))
    order = db.get(Order, order.id, populate_existing=True)
    assert (order.status, order.amount_refunded, order.credits_reversed) == \
        ("partially_refunded", 250, 50)
    assert balance(db, user) == (20, 80)
    # the rest: 50 more due but only 20 unspent
    deliver(db, settings, events, stripe.charge_refunded(order.provider_session_id, 500))
    order = db.get(Order, order.id, populate_existing=True)
    assert (order.status, order.amount_refunded, order.credits_reversed) == ("refunded", 500, 70)
    assert balance(db, user) == (0, 80)
    assert [e["credits_reversed"] for e in events.of("order_refunded")] == [50, 20]
    assert [e["amount_refunded"] for e in events.of("order_refunded")] == [250, 250]
    assert db.scalars(select(Payment)).one().status == "refunded"
    # an older notification arriving late changes nothing
    deliver(db, settings, events, stripe.charge_refunded(order.provider_session_id, 250))
    assert balance(db, user) == (0, 80)
    assert_clean(db)


def test_a_refund_for_an_unknown_payment_is_received(db, settings, events):
    evt = charge_refunded("pi_test_unknown", 500, 500)
    assert deliver(db, settings, events, evt)["received"]
    assert db.get(WebhookEvent, evt["id"]).outcome == "unknown_order"


@pytest.mark.parametrize("money_back", ["refund", "lost dispute"])
def test_a_paid_plan_starts_and_all_its_money_back_ends_it(db, settings, events, stripe, user,
                                                          money_back):
    """A plan bought once (a ``mode=payment`` session, as before plans renewed)."""
    order = checkout(db, settings, events, stripe, user, {"plan_id": "pro"})
    deliver(db, settings, events, stripe.checkout_completed(order.provider_session_id))
    account = db.get(Account, user, populate_existing=True)
    assert (account.plan, account.plan_expires_at) == ("pro", NOW + timedelta(days=30))
    assert balance(db, user) == (550, 0)
    assert events.of("plan_changed")[-1]["plan"] == "pro"
    assert events.of("order_paid")[-1]["kind"] == "plan"
    if money_back == "refund":
        deliver(db, settings, events, stripe.charge_refunded(order.provider_session_id, 1500))
    else:
        deliver(db, settings, events, stripe.dispute(order.provider_session_id))
        assert ledger.frozen_credits(db, user, NOW) == 500
        deliver(db, settings, events, stripe.dispute(order.provider_session_id, closed_as="lost"))
    account = db.get(Account, user, populate_existing=True)
    assert (account.plan, account.plan_expires_at) == ("free", None)
    assert balance(db, user) == (50, 0)
    assert events.of("plan_changed")[-1]["plan"] == "free"
    assert_clean(db)


def test_a_payment_after_the_order_timed_out_is_honoured(db, settings, events, stripe, user,
                                                         maintain):
    order = checkout(db, settings, events, stripe, user, {"pack_id": "small"})
    maintain("orders", NOW + timedelta(hours=26))
    assert db.get(Order, order.id, populate_existing=True).status == "failed"
    deliver(db, settings, events, stripe.checkout_completed(order.provider_session_id))
    assert db.get(Order, order.id, populate_existing=True).status == "paid"
    assert balance(db, user) == (150, 0)


def test_an_expired_session_fails_its_pending_order(db, settings, events, stripe, user):
    order = checkout(db, settings, events, stripe, user, {"pack_id": "small"})
    session = {k: v for k, v in stripe.session(order.provider_session_id).items()}
    deliver(db, settings, events, event("checkout.session.expired", dict(session, status="expired")))
    assert db.get(Order, order.id, populate_existing=True).status == "failed"


def test_the_ledger_of_a_refund_is_an_ordinary_entry(db, settings, events, stripe, user):
    order = checkout(db, settings, events, stripe, user, {"pack_id": "small"})
    deliver(db, settings, events, stripe.checkout_completed(order.provider_session_id))
    deliver(db, settings, events, stripe.charge_refunded(order.provider_session_id, 500))
    refund = db.scalars(select(LedgerEntry).where(LedgerEntry.kind == "refund")).one()
    assert (refund.amount, refund.held_change, refund.order_id) == (-100, 0, order.id)
    assert refund.idempotency_key == f"order:{order.id}:refund:500"
    assert ledger.find_entry(db, refund.idempotency_key).id == refund.id


# ---------------------------------------------------------------- refunds of held credits


def end(db, events, user, job_id, outcome) -> str:
    status = saga.job_finished(db, {"job_id": job_id, "user_id": user, "attempt": 1}, outcome,
                               NOW, events)
    db.commit()
    return status


def paid_pack(db, settings, events, stripe, user) -> Order:
    order = checkout(db, settings, events, stripe, user, {"pack_id": "small"})  # 100 for 500
    deliver(db, settings, events, stripe.checkout_completed(order.provider_session_id))
    return order


def test_a_refund_of_held_credits_is_taken_when_the_hold_is_released(db, settings, events,
                                                                     stripe, user):
    order = paid_pack(db, settings, events, stripe, user)
    held = spend(db, settings, events, user, 80)  # 50 signup + 30 of the pack
    deliver(db, settings, events, stripe.charge_refunded(order.provider_session_id, 500))
    order = db.get(Order, order.id, populate_existing=True)
    assert (order.credits_reversed, order.credits_pending) == (70, 30)
    assert balance(db, user) == (0, 80)
    assert_clean(db)
    # the job fails: its 50 signup credits come back, the pack's 30 are taken
    assert end(db, events, user, held, "failed") == "released"
    assert balance(db, user) == (50, 0)
    order = db.get(Order, order.id, populate_existing=True)
    assert (order.credits_reversed, order.credits_pending) == (100, 0)
    hold = db.scalars(select(Hold).where(Hold.job_id == held)).one()
    taken = ledger.find_entry(db, f"order:{order.id}:refund:hold:{hold.id}")
    assert (taken.kind, taken.amount, taken.held_change, taken.job_id) == ("refund", -30, 0, held)
    assert events.of("credits_released")[-1]["amount"] == 80
    assert end(db, events, user, held, "failed") == "duplicate"
    assert balance(db, user) == (50, 0)
    assert_clean(db)


def test_the_audit_finds_a_refund_waiting_for_more_than_is_held(db, settings, events, stripe,
                                                                user):
    order = paid_pack(db, settings, events, stripe, user)
    spend(db, settings, events, user, 80)  # 30 of the pack held
    deliver(db, settings, events, stripe.charge_refunded(order.provider_session_id, 500))
    assert_clean(db, user)
    db.execute(update(Order).where(Order.id == order.id).values(credits_pending=31))
    db.commit()
    problems = {p["problem"]: (p["expected"], p["actual"])
                for p in audit.verify_ledger(db, user)["problems"]}
    assert problems == {f"refund_pending_exceeds_held:{order.id}": (30, 31),
                        f"order_over_reversed:{order.id}": (100, 101)}


def test_a_refund_of_held_credits_is_taken_when_the_hold_expires(db, settings, events, stripe,
                                                                 user, maintain):
    order = paid_pack(db, settings, events, stripe, user)
    spend(db, settings, events, user, 130)  # 50 signup + 80 of the pack
    deliver(db, settings, events, stripe.charge_refunded(order.provider_session_id, 250))
    order = db.get(Order, order.id, populate_existing=True)
    # half the money back: 50 credits due, 20 unspent, 30 held
    assert (order.credits_reversed, order.credits_pending) == (20, 30)
    assert maintain("holds", NOW + timedelta(hours=7)) == 1
    db.commit()
    # 50 + 80 come back, 30 of them taken: the pack's 50 the user still paid for stay
    assert balance(db, user) == (100, 0)
    assert db.scalars(select(Lot).where(Lot.order_id == order.id)).one().remaining == 50
    assert_clean(db)


def test_what_a_job_captured_from_a_refunded_order_stays_spent(db, settings, events, stripe,
                                                               user):
    order = paid_pack(db, settings, events, stripe, user)
    first = spend(db, settings, events, user, 60)  # 50 signup + 10 of the pack
    second = spend(db, settings, events, user, 20)  # 20 of the pack
    deliver(db, settings, events, stripe.charge_refunded(order.provider_session_id, 500))
    assert db.get(Order, order.id, populate_existing=True).credits_pending == 30
    # the second job succeeds: its 20 stay spent, only 10 can still be taken
    assert end(db, events, user, second, "succeeded") == "captured"
    assert db.get(Order, order.id, populate_existing=True).credits_pending == 10
    assert balance(db, user) == (0, 60)
    assert end(db, events, user, first, "failed") == "released"
    order = db.get(Order, order.id, populate_existing=True)
    assert (order.credits_reversed, order.credits_pending) == (80, 0)
    assert balance(db, user) == (50, 0)
    assert_clean(db)


# ---------------------------------------------------------------- disputes (chargebacks)


def test_a_dispute_freezes_the_orders_credits_and_a_lost_one_takes_them_back(
        db, settings, events, stripe, user):
    order = paid_pack(db, settings, events, stripe, user)
    held = spend(db, settings, events, user, 60)  # 50 signup + 10 of the pack
    deliver(db, settings, events, stripe.dispute(order.provider_session_id))
    order = db.get(Order, order.id, populate_existing=True)
    assert (order.dispute_id, order.dispute_status) == ("dp_test_1", "open")
    assert orders.view(order)["dispute_status"] == "open"
    account = ledger.lock_account(db, user)
    assert (ledger.frozen_credits(db, user, NOW), ledger.spendable(db, account, NOW)) == (90, 0)
    db.rollback()
    # nothing of the frozen 90 can be spent: not by a job, not by an adjustment
    refused_job = uuid.uuid4()
    assert saga.job_requested(db, settings, {"job_id": refused_job, "user_id": user, "attempt": 1,
                                             "type": "text-to-image", "price": 1},
                              NOW, events) == "insufficient"
    db.commit()
    assert events.of("credits_insufficient")[-1]["available"] == 0
    error = refused(ledger.adjust, db, ledger.lock_account(db, user), -1, "test", "k", NOW)
    assert error.code == "insufficient_credits"
    db.rollback()
    # lost: the 90 unspent are taken now, the 10 held when the job ends
    lost = stripe.dispute(order.provider_session_id, closed_as="lost")
    deliver(db, settings, events, lost)
    assert deliver(db, settings, events, lost)["duplicate"]
    order = db.get(Order, order.id, populate_existing=True)
    assert (order.dispute_status, order.amount_charged_back) == ("lost", 500)
    assert (order.credits_reversed, order.credits_pending) == (90, 10)
    assert db.get(WebhookEvent, lost["id"]).outcome == "dispute_lost"
    assert balance(db, user) == (0, 60)
    end(db, events, user, held, "failed")
    assert balance(db, user) == (50, 0)
    assert ledger.frozen_credits(db, user, NOW) == 0
    chargeback = ledger.find_entry(db, f"order:{order.id}:chargeback:dp_test_1")
    assert (chargeback.kind, chargeback.amount) == ("refund", -90)
    # a late notification of its opening changes nothing
    deliver(db, settings, events, stripe.dispute(order.provider_session_id))
    assert db.get(Order, order.id, populate_existing=True).dispute_status == "lost"
    assert_clean(db)


@pytest.mark.parametrize("closed_as", ["won", "warning_closed"])
def test_a_dispute_closed_in_our_favour_restores_the_credits(db, settings, events, stripe, user,
                                                             closed_as):
    order = paid_pack(db, settings, events, stripe, user)
    deliver(db, settings, events, stripe.dispute(order.provider_session_id))
    spend(db, settings, events, user, 50)  # the signup credits are not frozen
    assert ledger.frozen_credits(db, user, NOW) == 100
    closed = stripe.dispute(order.provider_session_id, closed_as=closed_as)
    deliver(db, settings, events, closed)
    assert db.get(WebhookEvent, closed["id"]).outcome == "dispute_won"
    order = db.get(Order, order.id, populate_existing=True)
    assert (order.dispute_status, order.credits_reversed, order.amount_charged_back) == \
        (closed_as, 0, 0)
    assert ledger.frozen_credits(db, user, NOW) == 0
    spend(db, settings, events, user, 100)
    assert balance(db, user) == (0, 150)
    assert_clean(db)


def test_a_partial_chargeback_after_a_partial_refund(db, settings, events, stripe, user):
    order = paid_pack(db, settings, events, stripe, user)
    deliver(db, settings, events, stripe.charge_refunded(order.provider_session_id, 100))  # 20
    deliver(db, settings, events, stripe.dispute(order.provider_session_id, amount=400))
    deliver(db, settings, events, stripe.dispute(order.provider_session_id, closed_as="lost",
                                                 amount=400))
    order = db.get(Order, order.id, populate_existing=True)
    assert (order.amount_refunded, order.amount_charged_back, order.credits_reversed) == \
        (100, 400, 100)
    assert balance(db, user) == (50, 0)
    assert_clean(db)


def test_a_dispute_of_an_unknown_payment_is_received(db, settings, events):
    from tests.fakes.stripe import charge_dispute

    evt = charge_dispute("charge.dispute.created", "pi_test_unknown", 500)
    assert deliver(db, settings, events, evt)["received"]
    assert db.get(WebhookEvent, evt["id"]).outcome == "unknown_order"
