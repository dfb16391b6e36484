"""Plan periods, monthly grants, paid plan activation and its end."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from services.billing import ledger, plans
from services.billing import privacy as billing_privacy
from services.billing.models import Account, LedgerEntry, Order
from services.billing.settings import BillingSettings
from tests.unit.billing.conftest import NOW


@pytest.mark.parametrize("now, start, end, key", [
    (datetime(2026, 3, 10, 12, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC),
     datetime(2026, 4, 1, tzinfo=UTC), "2026-03"),
    (datetime(2026, 12, 31, 23, 59, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC),
     datetime(2027, 1, 1, tzinfo=UTC), "2026-12"),
    (datetime(2027, 1, 1, 0, 0, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC),
     datetime(2027, 2, 1, tzinfo=UTC), "2027-01"),
])
def test_the_period_is_the_utc_calendar_month(now, start, end, key):
    assert plans.period_bounds(now) == (start, end)
    assert plans.period_key(now) == key


def grants(db, user) -> list[LedgerEntry]:
    return list(db.scalars(select(LedgerEntry).where(
        LedgerEntry.user_id == user, LedgerEntry.kind == "grant").order_by(LedgerEntry.seq)))


def test_the_signup_month_has_no_monthly_grant(db, settings, user, maintain):
    assert maintain("grants", NOW) == 0
    assert len(grants(db, user)) == 1


def test_monthly_grants_are_given_once_per_month_and_expire_at_its_end(db, settings, user,
                                                                       maintain):
    april = datetime(2026, 4, 2, 3, 0, tzinfo=UTC)
    assert maintain("grants", april) == 1
    assert maintain("grants", april + timedelta(hours=1)) == 0
    monthly = grants(db, user)[-1]
    assert monthly.idempotency_key == f"grant:monthly:{user}:2026-04"
    assert (monthly.amount, monthly.expires_at) == (20, datetime(2026, 5, 1, tzinfo=UTC))
    # even with the account's marker reset, the key stops a second grant
    db.get(Account, user).granted_period = "2026-03"
    db.commit()
    assert maintain("grants", april) == 0
    assert len(grants(db, user)) == 2
    assert db.get(Account, user).granted_period == "2026-04"
    may = datetime(2026, 5, 1, 0, 30, tzinfo=UTC)
    assert maintain("grants", may) == 1
    # April's grant (and the signup grant) expired before May's was given
    expired = db.scalars(select(LedgerEntry).where(LedgerEntry.kind == "expire")
                         .order_by(LedgerEntry.seq)).all()
    assert sorted(e.amount for e in expired) == [-50, -20]
    assert grants(db, user)[-1].balance_after == 20


def test_grants_can_be_configured_never_to_expire(db, events, maintain):
    settings = BillingSettings(grants_expire_at_period_end=False, signup_grant_expires_days=None)
    user = uuid.uuid4()
    plans.open_account(db, settings, user, NOW, events)
    db.commit()
    maintain("grants", datetime(2026, 4, 2, tzinfo=UTC), settings)
    assert [g.expires_at for g in grants(db, user)] == [None, None]


def paid_order(db, user, plan="pro", credits=500) -> Order:
    order = Order(user_ref=str(user), kind="plan", item_id=plan, description=f"{plan} plan",
                  credits=credits, amount=1500, currency="usd", status="paid", created_at=NOW,
                  amount_refunded=0, credits_reversed=0)
    db.add(order)
    db.flush()
    return order


def test_a_paid_plan_lasts_one_period_with_its_grant(db, settings, events, user, maintain):
    account = ledger.lock_account(db, user)
    plans.activate_plan(db, settings, account, paid_order(db, user), NOW, events)
    db.commit()
    assert (account.plan, account.plan_expires_at) == ("pro", NOW + timedelta(days=30))
    grant = grants(db, user)[-1]
    assert (grant.amount, grant.expires_at) == (500, NOW + timedelta(days=30))
    assert events.of("plan_changed")[-1]["plan"] == "pro"
    assert plans.effective_plan(settings, account, NOW).priority == 5
    # no free grant while the paid plan runs
    assert maintain("grants", datetime(2026, 4, 1, 1, tzinfo=UTC)) == 0
    # the end: back to free, and the free grant resumes for the month
    later = NOW + timedelta(days=30, minutes=1)
    assert plans.effective_plan(settings, account, later).id == "free"
    assert maintain("plans", later) == 1
    assert maintain("plans", later) == 0
    account = db.get(Account, user, populate_existing=True)
    assert (account.plan, account.plan_expires_at) == ("free", None)
    assert events.of("plan_changed")[-1]["plan"] == "free"
    assert events.of("plan_changed")[-1]["retention_days"] == 30
    assert maintain("grants", later) == 1


def test_buying_the_current_plan_again_extends_it(db, settings, events, user):
    account = ledger.lock_account(db, user)
    plans.activate_plan(db, settings, account, paid_order(db, user), NOW, events)
    plans.activate_plan(db, settings, account, paid_order(db, user), NOW + timedelta(days=5),
                        events)
    db.commit()
    assert account.plan_expires_at == NOW + timedelta(days=60)


def test_an_erased_user_never_gets_an_account_again(db, settings, events, user):
    billing_privacy.erase(db, settings, user, NOW)
    db.commit()
    assert plans.open_account(db, settings, user, NOW, events) is None
    assert db.get(Account, user) is None


def test_bad_plan_configuration_is_refused():
    with pytest.raises(ValueError, match="DEFAULT_PLAN"):
        BillingSettings(default_plan="gold")
    with pytest.raises(ValueError, match="without a price"):
        BillingSettings(default_plan="pro")
