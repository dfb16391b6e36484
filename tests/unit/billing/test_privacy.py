"""Billing's part of privacy: the erasure counted per table (credit data
deleted, payment records pseudonymised) and the schedule, from its settings."""

from __future__ import annotations

from services.billing import retention
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
