"""``verify_ledger``: what an auditor checks, in a few aggregate queries.

For every account (or one):

- ``available_mismatch`` / ``held_mismatch``: the cached balances against the
  sums of the ledger entries;
- ``held_vs_open_holds``: the held balance against the open holds;
- ``available_vs_lots``: the available balance against the lots' remainders;
- ``lot_remaining_mismatch``: each lot's remainder against the movements of
  entries into and out of it; ``lot_out_of_bounds``: a remainder below zero
  or above the lot's credits;
- ``entry_movements_mismatch``: each entry's amount against the lot
  movements it made;
- ``seq_gap``: entries numbered 1..n without a hole (a deleted row shows);
  ``entry_count_mismatch``: the account's counter against the entries;
- ``balance_after_chain`` / ``held_after_chain``: each entry's balances
  against the running sums up to it;
- ``negative_balance``; ``hold_without_entry`` / ``hold_status_mismatch``:
  each hold against its hold, capture and release entries;
- ``orphan_entries``: entries of a user without an account;
- ``refund_pending_exceeds_held``: an order waiting to take back more held
  credits than open holds still hold of its lots; ``order_over_reversed``:
  taken and pending together beyond the order's credits.

``problems`` lists each finding as ``{user_id, problem, expected, actual}``
(``user_id`` also names the lot, entry or hold in ``problem`` when it helps).

The checks run over a range of accounts (:class:`Accounts`: one user, or the
user ids in ``(after, upto]``), every query bounded by it, so a large ledger
is verified a page of accounts at a time (:func:`verify_page`) in bounded
memory; :func:`verify_ledger` walks every page; :func:`verify_step` is one
page of a walk the caller drives (``darkroom-ops billing verify``).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.billing.ledger import held_from_lot
from services.billing.models import Account, Hold, HoldStatus, LedgerEntry, Lot, LotMovement, Order
from services.common.pagination import decode_after_cursor, encode_after_cursor

MAX_PROBLEMS = 1000
PAGE_ACCOUNTS = 1000  # a whole-ledger verification reads this many accounts at a time


@dataclass(frozen=True)
class Accounts:
    """The accounts a verification covers: ``only`` one user, or the user ids
    in ``(after, upto]`` (``None``: that end is open). Ids compare as UUIDs,
    which order like their canonical text (``Order.user_ref``)."""

    only: uuid.UUID | None = None
    after: uuid.UUID | None = None
    upto: uuid.UUID | None = None

    def __call__(self, stmt, column, text: bool = False):
        def value(user_id):
            return str(user_id) if text else user_id

        if self.only is not None:
            return stmt.where(column == value(self.only))
        if self.after is not None:
            stmt = stmt.where(column > value(self.after))
        if self.upto is not None:
            stmt = stmt.where(column <= value(self.upto))
        return stmt


def verify_ledger(db: Session, user_id: uuid.UUID | None = None) -> dict:
    """One account, or every account a page at a time: ``{accounts_checked, problems}``
    (at most :data:`MAX_PROBLEMS` listed)."""
    if user_id is not None:
        return _verify(db, Accounts(only=user_id), MAX_PROBLEMS)
    checked, problems, after = 0, [], None
    while True:
        page = verify_page(db, after, PAGE_ACCOUNTS, MAX_PROBLEMS - len(problems))
        checked += page["accounts_checked"]
        problems += page["problems"]
        after = page["next_after"]
        if after is None:  # (the session's identity map holds rows weakly: memory stays bounded)
            return {"accounts_checked": checked, "problems": problems}


def verify_page(db: Session, after: uuid.UUID | None, limit: int,
                max_problems: int = MAX_PROBLEMS) -> dict:
    """The next ``limit`` accounts after the user id ``after`` (from the first
    when None): ``{accounts_checked, problems, next_after}``, ``next_after``
    being the last account checked, or None when no account follows (the
    last page also covers entries of users without an account beyond it)."""
    following = select(Account.user_id).order_by(Account.user_id)
    if after is not None:
        following = following.where(Account.user_id > after)
    upto = db.scalar(following.offset(limit - 1).limit(1))
    result = _verify(db, Accounts(after=after, upto=upto), max_problems)
    return {**result, "next_after": upto}


def verify_step(db: Session, limit: int, cursor: str | None) -> tuple[dict, int | None]:
    """One page of a walk over every account (the ``verify_ledger`` RPC with a
    ``limit``): the answer ``{accounts_checked, problems, accounts_total (first
    page only), next_cursor (None after the last page)}`` and, on the last
    page, how many problems the whole walk listed (else None). The cursor
    carries that count from page to page, so the walk lists at most
    :data:`MAX_PROBLEMS`; a cursor not made here is 400 ``invalid_request``."""
    after, listed = decode_after_cursor(cursor) if cursor else (None, 0)
    page = verify_page(db, after, limit, max(0, MAX_PROBLEMS - listed))
    listed += len(page["problems"])
    done = page["next_after"] is None
    return {"accounts_checked": page["accounts_checked"], "problems": page["problems"],
            "accounts_total": None if after else count_accounts(db),
            "next_cursor": None if done else encode_after_cursor(page["next_after"], listed)
            }, (listed if done else None)


def count_accounts(db: Session) -> int:
    return int(db.scalar(select(func.count()).select_from(Account)) or 0)


def _verify(db: Session, only: Accounts, max_problems: int) -> dict:
    problems: list[dict] = []

    def problem(user, name, expected, actual):
        if len(problems) < max_problems:
            problems.append({"user_id": str(user), "problem": name,
                             "expected": expected, "actual": actual})

    accounts = {a.user_id: a for a in db.scalars(only(select(Account), Account.user_id))}
    sums = {
        r.user_id: r for r in db.execute(only(
            select(LedgerEntry.user_id, func.sum(LedgerEntry.amount).label("amount"),
                   func.sum(LedgerEntry.held_change).label("held"),
                   func.count().label("n"), func.max(LedgerEntry.seq).label("max_seq"))
            .group_by(LedgerEntry.user_id), LedgerEntry.user_id))
    }
    open_holds = dict(db.execute(only(
        select(Hold.user_id, func.sum(Hold.amount)).where(Hold.status == HoldStatus.OPEN)
        .group_by(Hold.user_id), Hold.user_id)).all())
    lot_sums = dict(db.execute(only(
        select(Lot.user_id, func.sum(Lot.remaining)).group_by(Lot.user_id), Lot.user_id)).all())

    for uid, account in accounts.items():
        s = sums.get(uid)
        amount, held = (int(s.amount), int(s.held)) if s else (0, 0)
        count, max_seq = (int(s.n), int(s.max_seq)) if s else (0, 0)
        if account.available != amount:
            problem(uid, "available_mismatch", amount, account.available)
        if account.held != held:
            problem(uid, "held_mismatch", held, account.held)
        if account.available < 0 or account.held < 0:
            problem(uid, "negative_balance", 0, min(account.available, account.held))
        if account.held != int(open_holds.get(uid) or 0):
            problem(uid, "held_vs_open_holds", int(open_holds.get(uid) or 0), account.held)
        if account.available != int(lot_sums.get(uid) or 0):
            problem(uid, "available_vs_lots", int(lot_sums.get(uid) or 0), account.available)
        if count != max_seq:
            problem(uid, "seq_gap", max_seq, count)
        if account.entry_seq != max_seq:
            problem(uid, "entry_count_mismatch", max_seq, account.entry_seq)
    for uid in set(sums) - set(accounts):
        problem(uid, "orphan_entries", 0, int(sums[uid].n))

    # Lots against their movements.
    moved = only(select(LotMovement.lot_id, func.sum(LotMovement.amount).label("total")),
                 LotMovement.user_id).group_by(LotMovement.lot_id).subquery()
    for lot, total in db.execute(only(
            select(Lot, func.coalesce(moved.c.total, 0)).outerjoin(moved, moved.c.lot_id == Lot.id),
            Lot.user_id)):
        if lot.remaining != int(total):
            problem(lot.user_id, f"lot_remaining_mismatch:{lot.id}", int(total), lot.remaining)
        if not 0 <= lot.remaining <= lot.credits:
            problem(lot.user_id, f"lot_out_of_bounds:{lot.id}", lot.credits, lot.remaining)

    # Entries against the movements they made.
    by_entry = only(select(LotMovement.entry_id, func.sum(LotMovement.amount).label("total")),
                    LotMovement.user_id).group_by(LotMovement.entry_id).subquery()
    for entry_id, uid, amount, total in db.execute(only(
            select(LedgerEntry.id, LedgerEntry.user_id, LedgerEntry.amount,
                   func.coalesce(by_entry.c.total, 0))
            .outerjoin(by_entry, by_entry.c.entry_id == LedgerEntry.id)
            .where(LedgerEntry.amount != func.coalesce(by_entry.c.total, 0)),
            LedgerEntry.user_id)):
        problem(uid, f"entry_movements_mismatch:{entry_id}", amount, int(total))

    # The balance_after / held_after chain, with running sums in SQL.
    window = {"partition_by": LedgerEntry.user_id, "order_by": LedgerEntry.seq}
    chain = only(select(
        LedgerEntry.id, LedgerEntry.user_id, LedgerEntry.seq, LedgerEntry.balance_after,
        LedgerEntry.held_after,
        func.sum(LedgerEntry.amount).over(**window).label("running"),
        func.sum(LedgerEntry.held_change).over(**window).label("running_held"),
        func.row_number().over(**window).label("position"),
    ), LedgerEntry.user_id).subquery()
    for r in db.execute(select(chain).where(
            (chain.c.balance_after != chain.c.running)
            | (chain.c.held_after != chain.c.running_held)
            | (chain.c.seq != chain.c.position))
            .order_by(chain.c.user_id, chain.c.seq)):
        if r.balance_after != r.running:
            problem(r.user_id, f"balance_after_chain:{r.id}", int(r.running), r.balance_after)
        if r.held_after != r.running_held:
            problem(r.user_id, f"held_after_chain:{r.id}", int(r.running_held), r.held_after)
        if r.seq != r.position:
            problem(r.user_id, f"seq_gap:{r.id}", int(r.position), r.seq)

    # Holds against their entries.
    kinds = defaultdict(dict)
    for hold_id, kind, held_change in db.execute(only(
            select(LedgerEntry.hold_id, LedgerEntry.kind, LedgerEntry.held_change)
            .where(LedgerEntry.hold_id.is_not(None)), LedgerEntry.user_id)):
        kinds[hold_id][kind] = int(held_change)
    expected_kinds = {HoldStatus.OPEN: {"hold"}, HoldStatus.CAPTURED: {"hold", "capture"},
                      HoldStatus.RELEASED: {"hold", "release"}}
    for hold in db.scalars(only(select(Hold), Hold.user_id)):
        seen = kinds.get(hold.id, {})
        if seen.get("hold") != hold.amount:
            problem(hold.user_id, f"hold_without_entry:{hold.id}", hold.amount, seen.get("hold"))
        elif set(seen) != expected_kinds.get(hold.status, set()):
            problem(hold.user_id, f"hold_status_mismatch:{hold.id}", hold.status,
                    ",".join(sorted(seen)))
        elif any(v != -hold.amount for k, v in seen.items() if k != "hold"):
            problem(hold.user_id, f"hold_close_amount_mismatch:{hold.id}", -hold.amount,
                    [v for k, v in seen.items() if k != "hold"][0])

    # Refunds waiting for held credits: never more than open holds still hold
    # of the order's lots, never more than the order's credits in all.
    waiting = select(Order).where(Order.credits_pending > 0, Order.pseudonymised_at.is_(None))
    for order in db.scalars(only(waiting, Order.user_ref, text=True)):
        lots = db.scalars(select(Lot.id).where(Lot.order_id == order.id)).all()
        held = sum(held_from_lot(db, lot_id) for lot_id in lots)
        if order.credits_pending > held:
            problem(order.user_ref, f"refund_pending_exceeds_held:{order.id}", held,
                    int(order.credits_pending))
        if order.credits_pending + order.credits_reversed > order.credits:
            problem(order.user_ref, f"order_over_reversed:{order.id}", int(order.credits),
                    int(order.credits_pending + order.credits_reversed))

    return {"accounts_checked": len(accounts), "problems": problems}
