"""The billing service shell, the nameko way (``worker_factory``) on a real
SQLite database file: what its RPCs answer, and its transaction rule: the
shell commits (the domain modules never do), so what an entrypoint did is
committed when it answers and nothing is when it raised.

``seen`` is a second session on the same file: it sees only what was committed."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta

import pytest
from nameko.testing.services import worker_factory
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.billing import ledger, plans, saga
from services.billing import privacy as billing_privacy
from services.billing import service as billing_service
from services.billing.models import Account, Base, Hold, LedgerEntry, Lot, Order
from services.billing.payments.stripe import CheckoutSession, PaymentProviderError
from services.billing.service import BillingService
from services.common.db import make_engine
from services.common.errors import DomainError
from tests.unit.billing.conftest import NOW


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/billing.db")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def db(engine):
    with Session(engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture
def seen(engine):
    """What is committed: a fresh session (and transaction) per look."""

    def look(statement):
        with Session(engine) as session:
            return session.scalars(statement).all()

    return look


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    monkeypatch.setattr(billing_service, "utcnow", lambda: NOW)


class Stripe:
    """Answers a session, or fails; ``during`` runs while it "answers"."""

    def __init__(self, fail=False, during=lambda: None):
        self.fail, self.during, self.calls = fail, during, 0

    def create_checkout_session(self, *, order_id, **_):
        self.calls += 1
        self.during()
        if self.fail:
            raise PaymentProviderError("stripe unreachable: ConnectionError")
        return CheckoutSession(id=f"cs_{order_id}", url=f"https://stripe.test/{order_id}")


def shell(db, settings, events, stripe=None):
    return worker_factory(BillingService, db=db, settings=settings, dispatch=events,
                          stripe=stripe or Stripe())


# ---------------------------------------------------------------- get_balance


def test_get_balance_opens_the_account_and_commits_it(db, settings, events, seen):
    user = uuid.uuid4()
    answer = shell(db, settings, events).get_balance(str(user))
    assert (answer["available"], answer["held"], answer["frozen"], answer["plan"]) == (
        50, 0, 0, "free")
    assert answer["plan_expires_at"] is None
    assert [a.available for a in seen(select(Account).where(Account.user_id == user))] == [50]
    assert [e["plan"] for e in events.of("plan_changed")] == ["free"]


def test_get_balance_reports_the_period_and_what_cannot_be_spent(db, settings, events):
    user = uuid.uuid4()
    plans.open_account(db, settings, user, NOW, events)  # 50 granted this period
    account = ledger.lock_account(db, user)
    frozen, _ = ledger.credit(db, account, kind="purchase", key="test:frozen", credits=30,
                              now=NOW, expires_at=None)
    db.get(Lot, frozen.lot_id).frozen = True  # a disputed order's credits
    ledger.credit(db, account, kind="adjustment", key="test:gone", credits=7, now=NOW,
                  expires_at=NOW - timedelta(seconds=1))  # expired, not settled yet
    db.commit()
    job = uuid.uuid4()
    event = {"job_id": job, "user_id": user, "attempt": 1, "price": 12}
    saga.job_requested(db, settings, event, NOW, events)
    saga.job_finished(db, event, "succeeded", NOW, events)
    saga.job_requested(db, settings, {**event, "attempt": 2, "price": 5}, NOW, events)
    db.commit()
    answer = shell(db, settings, events).get_balance(str(user))
    # 50 + 30 + 7 - 12 - 5 on the account; the expired 7 and the frozen 30 are not spendable
    assert (answer["available"], answer["held"], answer["frozen"]) == (33, 5, 30)
    assert (answer["granted_this_period"], answer["used_this_period"]) == (50, 12)
    assert (answer["period_start"], answer["period_end"]) == (
        "2026-03-01T00:00:00+00:00", "2026-04-01T00:00:00+00:00")


def test_get_balance_of_a_paid_plan_says_when_it_ends(db, settings, events):
    user = uuid.uuid4()
    account = plans.locked_account(db, settings, user, NOW, events)
    order = Order(user_ref=str(user), kind="plan", item_id="pro", description="Pro plan",
                  credits=500, amount=1500, currency="usd", status="paid", created_at=NOW,
                  amount_refunded=0, credits_reversed=0)
    db.add(order)
    db.flush()
    plans.activate_plan(db, settings, account, order, NOW, events)
    db.commit()
    answer = shell(db, settings, events).get_balance(str(user))
    assert (answer["plan"], answer["available"]) == ("pro", 550)
    assert answer["plan_expires_at"] == (NOW + timedelta(days=30)).isoformat()


def test_get_balance_refuses_a_malformed_user_and_an_erased_one(db, settings, events, seen):
    with pytest.raises(DomainError) as malformed:
        shell(db, settings, events).get_balance("not-a-uuid")
    assert (malformed.value.code, malformed.value.status) == ("invalid_request", 400)
    user = uuid.uuid4()
    plans.open_account(db, settings, user, NOW, events)
    db.commit()
    billing_privacy.erase(db, settings, user, NOW)
    db.commit()
    with pytest.raises(DomainError) as erased:
        shell(db, settings, events).get_balance(str(user))
    assert (erased.value.code, erased.value.status) == ("not_found", 404)
    assert seen(select(Account).where(Account.user_id == user)) == []


# ---------------------------------------------------------------- prices and plans


def test_list_prices_publishes_every_job_type_and_the_packs_cheapest_first(db, settings, events):
    backwards = dict(reversed(list(settings.packs.items())))
    settings = dataclasses.replace(settings, packs=backwards)
    answer = shell(db, settings, events).list_prices()
    assert answer["currency"] == "credits"
    assert [p["id"] for p in answer["packs"]] == ["small", "large"]
    assert [(p["credits"], p["price"]["amount"]) for p in answer["packs"]] == [
        (100, 500), (1000, 4000)]
    listed = {rule["type"]: rule for rule in answer["job_types"]}
    assert list(listed) == sorted(settings.prices)
    assert listed["image-to-video"]["default_duration_s"] == 4


def test_list_plans_lists_the_cheapest_first(db, settings, events):
    backwards = dict(reversed(list(settings.plans.items())))
    settings = dataclasses.replace(settings, plans=backwards)
    answer = shell(db, settings, events).list_plans()
    assert [p["id"] for p in answer["items"]] == ["free", "pro", "studio"]


# ---------------------------------------------------------------- the commit rule


def test_a_failed_domain_call_leaves_nothing_committed(db, settings, events, seen):
    """The adjustment opens the account, then finds too few credits: the
    account it opened is not committed either."""
    user = uuid.uuid4()
    with pytest.raises(DomainError) as refused:
        shell(db, settings, events).adjust(str(user), -80, "correction", "k1")
    assert (refused.value.code, refused.value.status) == ("insufficient_credits", 402)
    assert seen(select(Account)) == []
    assert seen(select(LedgerEntry)) == []


def test_an_entrypoint_commits_what_it_did_before_it_answers(db, settings, events, seen):
    user = uuid.uuid4()
    answer = shell(db, settings, events).adjust(str(user), -20, "correction", "k1")
    assert answer["amount"] == -20
    assert [e.kind for e in seen(select(LedgerEntry).order_by(LedgerEntry.seq))] == [
        "grant", "adjustment"]
    assert [a.available for a in seen(select(Account))] == [30]


def test_the_order_is_committed_before_stripe_is_asked(db, settings, events, seen):
    """The named exception: ``create_checkout`` commits the pending order
    first, so a paid session always finds it and no transaction stays open
    while Stripe answers; Stripe's answer is committed next."""
    user = uuid.uuid4()
    while_stripe_answers = []
    stripe = Stripe(during=lambda: while_stripe_answers.extend(
        (o.status, o.checkout_url) for o in seen(select(Order))))
    answer = shell(db, settings, events, stripe).create_checkout(str(user), {"pack_id": "small"})
    assert while_stripe_answers == [("pending", None)]
    [order] = seen(select(Order))
    assert (order.status, order.checkout_url) == ("pending", answer["checkout_url"])
    assert order.checkout_url == f"https://stripe.test/{order.id}"


def test_an_order_stripe_refused_is_committed_failed(db, settings, events, seen):
    user = uuid.uuid4()
    with pytest.raises(DomainError) as refused:
        shell(db, settings, events, Stripe(fail=True)).create_checkout(
            str(user), {"pack_id": "small"})
    assert (refused.value.code, refused.value.status) == ("payment_provider_unavailable", 503)
    assert [(o.status, o.failure_reason) for o in seen(select(Order))] == [
        ("failed", "stripe unreachable: ConnectionError")]


def test_a_sweep_commits_each_account_on_its_own(db, settings, events, seen, monkeypatch):
    """Stale holds of two accounts: the second one's release fails; the
    first one's stays released (its own transaction was committed)."""
    users = [uuid.uuid4(), uuid.uuid4()]
    long_ago = NOW - timedelta(hours=7)
    for n, user in enumerate(users):
        plans.open_account(db, settings, user, long_ago, events)
        saga.job_requested(db, settings, {"job_id": uuid.uuid4(), "user_id": user,
                                          "attempt": 1, "price": 10},
                           long_ago + timedelta(minutes=n), events)
    db.commit()
    release = saga.release_stale_hold

    def second_fails(db, hold, now, dispatch):
        if hold[0] == users[1]:
            raise RuntimeError("the database went away")
        return release(db, hold, now, dispatch)

    monkeypatch.setattr(saga, "release_stale_hold", second_fails)
    with pytest.raises(RuntimeError):
        shell(db, settings, events).run_maintenance(["holds"])
    db.rollback()  # as the worker's Database provider does after a failure
    statuses = {h.user_id: h.status for h in seen(select(Hold))}
    assert statuses == {users[0]: "released", users[1]: "open"}
    monkeypatch.setattr(saga, "release_stale_hold", release)
    assert shell(db, settings, events).run_maintenance(["holds"]) == {"holds": 1}
    assert {h.status for h in seen(select(Hold))} == {"released"}


def test_maintenance_commits_the_orders_it_failed(db, settings, events, seen):
    user = uuid.uuid4()
    plans.open_account(db, settings, user, NOW - timedelta(hours=1), events)
    from services.billing import orders

    orders.begin_checkout(db, settings, user, {"pack_id": "small"}, None,
                          NOW - timedelta(hours=1), events)
    db.commit()
    assert shell(db, settings, events).run_maintenance(["orders"]) == {"orders": 1}
    assert [(o.status, o.failure_reason) for o in seen(select(Order))] == [
        ("failed", "no checkout session")]
