"""Shared assertion: the ledger passes every audit check."""

from __future__ import annotations

from services.billing import audit


def assert_clean(db, user_id=None) -> dict:
    result = audit.verify_ledger(db, user_id)
    assert result["problems"] == [], result["problems"]
    return result
