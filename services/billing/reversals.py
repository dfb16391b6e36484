"""Taking an order's credits back: refunds, lost disputes, and disputes open.

When money goes back to the buyer (a refund, or a dispute the merchant lost),
the order's credits are taken back in proportion to the money,
``credits × money back / amount`` (rounded down, minus what earlier money
back already called for). What is due comes from the order's lot:

- what is still **unspent** in the lot is taken at once (a ``refund`` entry);
- what open **holds** drew from the lot cannot be taken while they are open:
  it is recorded on the order (``credits_pending``) and taken when those
  holds are released (:func:`after_release`, a ``refund`` entry keyed on the
  hold), instead of returning to the balance;
- what was **captured** (spent by jobs that succeeded) stays spent, and so
  does whatever a pending hold captures later (:func:`after_capture` lowers
  ``credits_pending`` to what is still held).

A dispute **freezes** the order's lots while it is open (:func:`freeze`):
their credits still count in ``available`` but nothing is drawn from them.
Won (or closed as a warning, or prevented) it unfreezes them; lost, it takes
the credits back like a refund of the disputed amount.

Every function runs under the account lock the caller took (account first,
then the order), in the caller's transaction.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.billing import ledger
from services.billing.models import Account, Hold, Lot, Order
from services.common.db import locked

log = logging.getLogger(__name__)


def money_back(order: Order) -> int:
    """Minor units returned to the buyer so far: refunds and a lost dispute."""
    return min(int(order.amount_refunded) + int(order.amount_charged_back), int(order.amount))


def credits_due(order: Order, money: int) -> int:
    """The order's credits that ``money`` back calls for, in total."""
    return int(order.credits) * min(money, int(order.amount)) // int(order.amount)


def order_lots(db: Session, order: Order, user_id) -> list[Lot]:
    return list(db.scalars(select(Lot).where(Lot.order_id == order.id, Lot.user_id == user_id)
                           .order_by(Lot.created_at, Lot.id)))


def money_returned(db: Session, account: Account | None, order: Order, *, key: str, reason: str,
                   now: datetime, amount_refunded: int | None = None,
                   amount_charged_back: int | None = None) -> tuple[int, int]:
    """Money went back to the buyer: record the order's new refunded or
    charged-back total and take back the credits it calls for beyond what
    earlier money back did (none for an erased account). Returns (taken now,
    pending)."""
    before = money_back(order)
    if amount_refunded is not None:
        order.amount_refunded = amount_refunded
    if amount_charged_back is not None:
        order.amount_charged_back = amount_charged_back
    due = credits_due(order, money_back(order)) - credits_due(order, before)
    if account is None:
        return 0, 0
    return reverse(db, account, order, due, key, reason, now)


def reverse(db: Session, account: Account, order: Order, due: int, key: str, reason: str,
            now: datetime) -> tuple[int, int]:
    """Take ``due`` credits of the order back: the unspent part now, the part
    open holds drew later. Returns (taken now, pending)."""
    if due <= 0:
        return 0, 0
    ledger.expire_lots(db, account, now)
    lots = order_lots(db, order, account.user_id)
    if not lots:
        return 0, 0
    lot = lots[0]
    taken = min(due, lot.remaining)
    if taken:
        ledger.post(db, account, kind="refund", key=key, amount=-taken, held_change=0, now=now,
                    movements=[(lot, -taken)], order_id=order.id, lot_id=lot.id, reason=reason)
    still_held = ledger.held_from_lot(db, lot.id) - int(order.credits_pending)
    pending = max(0, min(due - taken, still_held))
    order.credits_reversed += taken
    order.credits_pending += pending
    return taken, pending


def after_release(db: Session, account: Account, hold: Hold, now: datetime) -> int:
    """A released hold gave credits back to lots whose order still has
    credits pending: take them (instead of returning them to the balance).
    Returns how many were taken."""
    taken_total = 0
    for lot, returned in ledger.hold_movements(db, hold, "release"):
        if lot.order_id is None or returned <= 0:
            continue
        order = locked(db, Order, lot.order_id)
        if order is None or order.credits_pending <= 0:
            continue
        taken = min(int(order.credits_pending), returned, lot.remaining)
        ledger.post(db, account, kind="refund", key=f"order:{order.id}:refund:hold:{hold.id}",
                    amount=-taken, held_change=0, now=now, movements=[(lot, -taken)],
                    order_id=order.id, lot_id=lot.id, job_id=hold.job_id, attempt=hold.attempt,
                    reason=f"refund of order {order.id}: credits held when it was refunded")
        order.credits_pending -= taken
        order.credits_reversed += taken
        taken_total += taken
        log.info("refund taken at a hold's release", extra={
            "order_id": str(order.id), "hold_id": str(hold.id), "credits": taken})
    return taken_total


def after_capture(db: Session, hold: Hold) -> None:
    """A captured hold spent credits of lots whose order has credits pending:
    that spend stands, so the order can no longer take more than its lots
    still have in open holds."""
    db.flush()
    for lot, _ in ledger.hold_movements(db, hold, "hold"):
        if lot.order_id is None:
            continue
        order = locked(db, Order, lot.order_id)
        if order is None or order.credits_pending <= 0:
            continue
        order.credits_pending = min(int(order.credits_pending), ledger.held_from_lot(db, lot.id))


def freeze(db: Session, order: Order, user_id, frozen: bool) -> int:
    """Freeze (or unfreeze) the order's lots; returns their remaining credits."""
    lots = order_lots(db, order, user_id)
    for lot in lots:
        lot.frozen = frozen
    return sum(lot.remaining for lot in lots)
