"""The credit ledger for operators: ``billing.verify_ledger``,
``billing.adjust`` and ``billing.refund_order`` (a PayPal order refunded
through PayPal) over nameko RPC, and how the CLI prints their answers.

Credits are money: an adjustment always carries an idempotency key, so a
command that timed out can be run again with the same key without crediting
twice. When the operator gives none, one is made up and printed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from ops import rpc
from ops.errors import OpsError, id_argument
from ops.output import silent

# a page of accounts is checked in one RPC: give it longer than an ordinary one
VERIFY_TIMEOUT_SECONDS = 600
VERIFY_PAGE_ACCOUNTS = 500


def _call(config: dict, method: str, *args: Any, timeout: float | None = None,
          **kwargs: Any) -> Any:
    """``billing.<method>(*args, **kwargs)``; a DomainError propagates for the CLI to print."""
    return rpc.call(config, "billing", method, *args, timeout=timeout, **kwargs)


def user_id(value: str) -> str:
    """A user id as billing stores it (a canonical UUID); OpsError (exit 2) otherwise."""
    return id_argument(value, "user id")


def verify(config: dict, user: str | None = None,
           progress: Callable[[int], Any] | None = None,
           page_size: int | None = None) -> dict:
    """``{"accounts_checked", "problems": [{user_id, problem, expected, actual}]}``.

    One account in one call; every account a page of ``page_size`` accounts
    (default :data:`VERIFY_PAGE_ACCOUNTS`) per call: after the first page,
    ``bar = progress(accounts in all)``, and ``bar.update(accounts)`` after
    each page (the service lists at most its MAX_PROBLEMS problems over the
    whole walk)."""
    timeout = max(float(config.get("RPC_TIMEOUT_SECONDS") or 30), VERIFY_TIMEOUT_SECONDS)
    if user:
        return _call(config, "verify_ledger", user_id(user), timeout=timeout)
    page_size = page_size or VERIFY_PAGE_ACCOUNTS
    page = _call(config, "verify_ledger", None, page_size, None, timeout=timeout)
    checked, problems = page["accounts_checked"], list(page["problems"])
    bar_for = progress or (lambda total: silent())
    with bar_for(int(page.get("accounts_total") or 0)) as bar:
        bar.update(page["accounts_checked"])
        while page.get("next_cursor"):
            page = _call(config, "verify_ledger", None, page_size, page["next_cursor"],
                         timeout=timeout)
            checked += page["accounts_checked"]
            problems += page["problems"]
            bar.update(page["accounts_checked"])
    return {"accounts_checked": checked, "problems": problems}


def new_idempotency_key() -> str:
    return f"ops-adjust-{uuid.uuid4()}"


def adjust(config: dict, user: str, credits: int, reason: str, idempotency_key: str) -> dict:
    """Add (or, negative, take away) ``credits``; returns the ledger entry."""
    if credits == 0:
        raise OpsError("--credits must not be 0", exit_code=2)
    reason = reason.strip()
    if not reason:
        raise OpsError("--reason must say why (the user sees it in their ledger)", exit_code=2)
    key = idempotency_key.strip()
    if not key:
        raise OpsError("--idempotency-key must not be empty", exit_code=2)
    return _call(config, "adjust", user_id(user), credits, reason, key)


def refund(config: dict, order: str, amount: int | None) -> dict:
    """Refund ``amount`` minor units of a PayPal order (all that is left by
    default) through PayPal; returns the order."""
    if amount is not None and amount <= 0:
        raise OpsError("--amount must be positive (minor units)", exit_code=2)
    return _call(config, "refund_order", id_argument(order, "order id"), amount)


# ------------------------------------------------------------ printing


def refund_line(order: dict) -> str:
    return (f"order {order.get('id')}: {order.get('status')}, "
            f"{order.get('amount_refunded')} of {order.get('amount')} "
            f"{str(order.get('currency') or '').upper()} refunded")



def plural(n: int, word: str) -> str:
    return f"{n} {word if n == 1 else word + 's'}"


def verify_lines(result: dict) -> list[str]:
    """A summary line, then one aligned row per problem."""
    checked = int(result.get("accounts_checked") or 0)
    problems = result.get("problems") or []
    if not problems:
        return [f"checked {plural(checked, 'account')}: the ledger is consistent"]
    rows = [(str(p.get("user_id") or "-"), str(p.get("problem") or "-"),
             _value(p.get("expected")), _value(p.get("actual"))) for p in problems]
    header = ("USER", "PROBLEM", "EXPECTED", "ACTUAL")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(row) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()

    return [f"checked {plural(checked, 'account')}: {plural(len(problems), 'problem')} found",
            line(header), *(line(row) for row in rows)]


def _value(value: Any) -> str:
    return "-" if value is None else str(value)


def adjust_line(entry: dict, user: str, key: str) -> str:
    amount = int(entry.get("amount") or 0)
    return (f"{'credited' if amount >= 0 else 'debited'} {abs(amount)} credits "
            f"{'to' if amount >= 0 else 'from'} user {user_id(user)}: available now "
            f"{entry.get('balance_after')} (entry {entry.get('id')}, idempotency key {key})")
