"""The credit ledger: exactly-once, append-only, auditable.

Every change to a user's credits is one ``ledger_entries`` row written by
:func:`post`, inside one transaction that first locks the user's account row
(:func:`lock_account`: ``SELECT ... FOR UPDATE`` on PostgreSQL, the database
write lock on SQLite). The row's cached ``available`` and ``held`` move with
the entry, so they always equal the sums of the entries.

Each entry has a UNIQUE ``idempotency_key`` naming the fact it records: a
duplicate event or call finds the entry already there (under the lock, so
after the first transaction committed) and returns it instead of writing a
second one; the unique index is the last guard should two get past that.

Credits sit in lots (:class:`~services.billing.models.Lot`): a hold draws from
the lots expiring first and records what it took from each
(``lot_movements``); its release gives the same credits back to the same lots;
a lot past its expiry turns its remainder into an ``expire`` entry.

Entry kinds (``amount`` changes available, ``held_change`` changes held):

=========== ======== ============ ======================================
kind        amount   held_change  key
=========== ======== ============ ======================================
grant       +N       0            ``grant:signup:<user>``, ``grant:monthly:<user>:<YYYY-MM>``,
                                  ``order:<id>:grant``
purchase    +N       0            ``order:<id>:purchase``
hold        -N       +N           ``job:<job>:<attempt>:hold``
capture     0 (-N)   -N (0)       ``job:<job>:<attempt>:capture`` (in brackets: after the hold expired)
release     +N       -N           ``job:<job>:<attempt>:release``
refund      -N       0            ``order:<id>:refund:<cumulative minor units refunded>``,
                                  ``order:<id>:chargeback:<dispute>``,
                                  ``order:<id>:refund:hold:<hold>`` (see :mod:`reversals`)
expire      -N       0            ``lot:<lot>:expire:<n>``
adjustment  ±N       0            ``adjust:<user>:<operator's key>``
=========== ======== ============ ======================================

Nothing here commits: every function works in the caller's transaction (under
the account lock the caller took with :func:`lock_account`), and the caller commits.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.billing.models import Account, Hold, HoldStatus, LedgerEntry, Lot, LotMovement
from services.common.errors import DomainError, conflict
from services.common.ids import new_id
from services.common.pagination import decode_seq_cursor, encode_seq_cursor

log = logging.getLogger(__name__)


def insufficient_credits(required: int, available: int) -> DomainError:
    return DomainError("insufficient_credits", "not enough credits", 402,
                       {"required": required, "available": available})


# ---------------------------------------------------------------- accounts and entries

ACCOUNT_LOCKS = "billing.account_locks"  # Session.info: (transaction, user ids locked in it)


def lock_account(db: Session, user_id: uuid.UUID) -> Account | None:
    """The account row, locked until the transaction ends (None if there is none).

    PostgreSQL: ``SELECT ... FOR UPDATE``. SQLite has no row locks: a no-op
    UPDATE first takes the database's write lock, so a second writer waits
    and then reads what the first committed.

    Locked once per transaction: asked again in the same transaction (an
    event handler's claim, then the saga's step) it answers with the row it
    holds, without a statement; the next transaction locks again.
    """
    user_id = uuid.UUID(str(user_id))
    held = db.info.get(ACCOUNT_LOCKS)
    if held is not None and held[0] is db.get_transaction() and user_id in held[1]:
        account = db.get(Account, user_id)
        if account is not None:
            return account
    if db.get_bind().dialect.name == "sqlite":
        db.execute(
            update(Account).where(Account.user_id == user_id).values(plan=Account.plan)
            .execution_options(synchronize_session=False)
        )
    account = db.scalars(
        select(Account).where(Account.user_id == user_id).with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    if account is not None:
        transaction = db.get_transaction()
        if held is None or held[0] is not transaction:
            # the transaction object itself is kept: its id cannot be reused meanwhile
            held = db.info[ACCOUNT_LOCKS] = (transaction, set())
        held[1].add(user_id)
    return account


def find_entry(db: Session, key: str) -> LedgerEntry | None:
    return db.scalars(select(LedgerEntry).where(LedgerEntry.idempotency_key == key)).first()


def post(db: Session, account: Account, *, kind: str, key: str, amount: int, held_change: int,
         now: datetime, movements: list[tuple[Lot, int]] = (), **fields) -> LedgerEntry:
    """Append one entry to the (locked) account's ledger and apply it: the
    cached balances, the lots it moves (``movements``: (lot, signed credits)).
    The caller has checked ``key`` is new."""
    if sum(delta for _, delta in movements) != amount:
        raise AssertionError(f"{kind}: lot movements do not add up to {amount}")
    account.available += amount
    account.held += held_change
    if account.available < 0 or account.held < 0:
        raise AssertionError(f"{kind} would make the balance of {account.user_id} negative")
    account.entry_seq += 1
    account.updated_at = now
    entry = LedgerEntry(
        id=new_id(), user_id=account.user_id, seq=account.entry_seq, kind=kind,
        idempotency_key=key, amount=amount, held_change=held_change,
        balance_after=account.available, held_after=account.held, created_at=now, **fields,
    )
    db.add(entry)
    for lot, delta in movements:
        lot.remaining += delta
        if lot.remaining < 0 or lot.remaining > lot.credits:
            raise AssertionError(f"lot {lot.id} would hold {lot.remaining} of {lot.credits}")
        db.add(LotMovement(entry_id=entry.id, lot_id=lot.id, user_id=account.user_id, amount=delta))
    db.flush()
    return entry


def credit(db: Session, account: Account, *, kind: str, key: str, credits: int, now: datetime,
           expires_at: datetime | None, source: str | None = None, **fields) -> tuple[LedgerEntry, bool]:
    """Credits into a new lot (grant, purchase, positive adjustment); returns
    (entry, created). ``credits`` 0 writes nothing and returns (None, False)."""
    existing = find_entry(db, key)
    if existing is not None:
        return existing, False
    if credits <= 0:
        return None, False
    lot = Lot(id=new_id(), user_id=account.user_id, source=source or kind, credits=credits,
              remaining=0, expires_at=expires_at, order_id=fields.get("order_id"), created_at=now)
    db.add(lot)
    entry = post(db, account, kind=kind, key=key, amount=credits, held_change=0, now=now,
                 movements=[(lot, credits)], lot_id=lot.id, expires_at=expires_at, **fields)
    return entry, True


def spendable_lots(db: Session, user_id: uuid.UUID, now: datetime) -> list[Lot]:
    """The user's lots with credits left and not frozen by a dispute, the one
    expiring first first (lots that never expire last; ties by age)."""
    return list(db.scalars(
        select(Lot)
        .where(Lot.user_id == user_id, Lot.remaining > 0, Lot.frozen.is_(False),
               (Lot.expires_at.is_(None)) | (Lot.expires_at > now))
        .order_by(Lot.expires_at.asc().nulls_last(), Lot.created_at, Lot.id)
    ))


def frozen_credits(db: Session, user_id: uuid.UUID, now: datetime) -> int:
    """Credits in lots frozen by an open dispute (and not expired): counted in
    ``available`` (they are the user's until the dispute is lost) but not
    spendable."""
    return int(db.scalar(
        select(func.coalesce(func.sum(Lot.remaining), 0)).where(
            Lot.user_id == user_id, Lot.remaining > 0, Lot.frozen.is_(True),
            (Lot.expires_at.is_(None)) | (Lot.expires_at > now))
    ))


def spendable(db: Session, account: Account, now: datetime) -> int:
    """What the (locked) account can spend now: expired lots settled first,
    frozen credits left out."""
    expire_lots(db, account, now)
    return account.available - frozen_credits(db, account.user_id, now)


def draw(db: Session, user_id: uuid.UUID, amount: int, now: datetime) -> list[tuple[Lot, int]]:
    """Take ``amount`` credits from the lots expiring first: [(lot, -taken)]."""
    movements, left = [], amount
    for lot in spendable_lots(db, user_id, now):
        if left == 0:
            break
        take = min(lot.remaining, left)
        movements.append((lot, -take))
        left -= take
    if left:
        raise AssertionError(f"the lots of {user_id} hold less than the available balance")
    return movements


def expire_lots(db: Session, account: Account, now: datetime) -> list[LedgerEntry]:
    """Turn the remainders of the account's lots past their expiry into
    ``expire`` entries. Run first by every operation that spends credits,
    so a hold never counts credits that are gone. Idempotent: an expired lot
    has nothing left (unless a release gave some back; those expire next)."""
    lots = db.scalars(
        select(Lot).where(Lot.user_id == account.user_id, Lot.remaining > 0,
                          Lot.expires_at.is_not(None), Lot.expires_at <= now)
        .order_by(Lot.expires_at, Lot.id)
    ).all()
    entries = []
    for lot in lots:
        done = db.scalar(select(func.count()).select_from(LedgerEntry).where(
            LedgerEntry.lot_id == lot.id, LedgerEntry.kind == "expire"))
        entries.append(post(
            db, account, kind="expire", key=f"lot:{lot.id}:expire:{done + 1}",
            amount=-lot.remaining, held_change=0, now=now, movements=[(lot, -lot.remaining)],
            lot_id=lot.id, order_id=lot.order_id, expires_at=lot.expires_at,
        ))
    return entries


def expired_unsettled(db: Session, user_id: uuid.UUID, now: datetime) -> int:
    """Credits still counted in ``available`` although their lot has expired
    (the timer has not run yet): a read-only balance subtracts them."""
    return db.scalar(
        select(func.coalesce(func.sum(Lot.remaining), 0)).where(
            Lot.user_id == user_id, Lot.remaining > 0, Lot.expires_at.is_not(None),
            Lot.expires_at <= now)
    )


def balance(db: Session, account: Account, now: datetime) -> dict:
    """What ``get_balance`` says of the account's credits now, read only:
    ``available`` without expired credits the timer has not settled yet nor
    frozen ones (``frozen`` apart), and ``held``."""
    frozen = frozen_credits(db, account.user_id, now)
    return {"available": account.available - expired_unsettled(db, account.user_id, now) - frozen,
            "held": account.held, "frozen": frozen}


def period_totals(db: Session, user_id: uuid.UUID, start: datetime, end: datetime) -> dict:
    """Credits granted and credits used by jobs in [start, end)."""

    def total(expr, kind: str) -> int:
        return int(db.scalar(select(func.coalesce(func.sum(expr), 0)).where(
            LedgerEntry.user_id == user_id, LedgerEntry.kind == kind,
            LedgerEntry.created_at >= start, LedgerEntry.created_at < end)))

    return {"granted_this_period": total(LedgerEntry.amount, "grant"),
            # a capture spends held credits, or available ones after its hold expired
            "used_this_period": total(-LedgerEntry.held_change - LedgerEntry.amount, "capture")}


# ---------------------------------------------------------------- holds (the generation saga)


@dataclass
class HoldResult:
    status: str  # reserved | insufficient | duplicate
    hold: Hold | None = None
    required: int = 0
    available: int = 0


def hold_key(job_id, attempt: int, kind: str) -> str:
    return f"job:{job_id}:{attempt}:{kind}"


def hold_credits(db: Session, account: Account, job_id: uuid.UUID, attempt: int, price: int,
                 plan: str, priority: int, now: datetime) -> HoldResult:
    """Reserve ``price`` credits for one attempt of a job on the locked account."""
    existing = db.scalars(select(Hold).where(Hold.job_id == job_id, Hold.attempt == attempt)).first()
    if existing is not None:
        return HoldResult("duplicate", existing, price, account.available)
    can_spend = spendable(db, account, now)
    if can_spend < price:
        return HoldResult("insufficient", None, price, can_spend)
    hold = Hold(id=new_id(), user_id=account.user_id, job_id=job_id, attempt=attempt, amount=price,
                status=HoldStatus.OPEN, plan=plan, priority=priority, created_at=now)
    db.add(hold)
    post(db, account, kind="hold", key=hold_key(job_id, attempt, "hold"), amount=-price,
         held_change=price, now=now, movements=draw(db, account.user_id, price, now),
         job_id=job_id, attempt=attempt, hold_id=hold.id)
    return HoldResult("reserved", hold, price, can_spend - price)


@dataclass
class CloseResult:
    status: str  # captured | released | duplicate | no_hold | refused
    hold: Hold | None = None
    amount: int = 0  # credits captured or released


def _hold_to_close(db: Session, account: Account | None, job_id: uuid.UUID, attempt: int,
                   action: str, closed: str) -> Hold | CloseResult:
    """The attempt's hold, for ``action`` (capture or release) to close; or the
    answer when there is none (``no_hold``) or it is ``closed`` already (``duplicate``)."""
    hold = db.scalars(select(Hold).where(
        Hold.job_id == job_id, Hold.attempt == attempt, Hold.user_id == account.user_id)
    ).first() if account is not None else None
    if hold is None:
        log.warning("%s for a job without a hold", action,
                    extra={"job_id": str(job_id), "attempt": attempt})
        return CloseResult("no_hold")
    if hold.status == closed:
        return CloseResult("duplicate", hold)
    return hold


def capture(db: Session, account: Account | None, job_id: uuid.UUID, attempt: int,
            now: datetime) -> CloseResult:
    """The job succeeded: the held credits are spent."""
    hold = _hold_to_close(db, account, job_id, attempt, "capture", HoldStatus.CAPTURED)
    if isinstance(hold, CloseResult):
        return hold
    if hold.status == HoldStatus.RELEASED:
        if hold.release_reason == "expired":
            return _capture_after_expiry(db, account, hold, now)
        log.error("capture refused: the hold was released (%s)", hold.release_reason,
                  extra={"job_id": str(job_id), "attempt": attempt, "hold_id": str(hold.id)})
        return CloseResult("refused", hold)
    post(db, account, kind="capture", key=hold_key(job_id, attempt, "capture"), amount=0,
         held_change=-hold.amount, now=now, job_id=job_id, attempt=attempt, hold_id=hold.id)
    hold.status, hold.closed_at = HoldStatus.CAPTURED, now
    return CloseResult("captured", hold, hold.amount)


def _capture_after_expiry(db: Session, account: Account, hold: Hold, now: datetime) -> CloseResult:
    """A job that succeeded although its hold had expired (its success was
    sent just before the expiry and arrived after it): the job is not free.
    Its price is taken from what the user can spend now (never below zero),
    as a ``capture`` entry that spends available credits directly (no
    ``hold_id``: the hold stays released)."""
    key = hold_key(hold.job_id, hold.attempt, "capture")
    existing = find_entry(db, key)
    if existing is not None:
        return CloseResult("duplicate", hold, -existing.amount)
    ids = {"job_id": str(hold.job_id), "attempt": hold.attempt, "hold_id": str(hold.id)}
    taken = min(hold.amount, spendable(db, account, now))
    if taken < hold.amount:
        log.error("capture after the hold expired: %d of %d credits available", taken,
                  hold.amount, extra=ids)
    if taken <= 0 < hold.amount:
        return CloseResult("refused", hold)
    post(db, account, kind="capture", key=key, amount=-taken, held_change=0, now=now,
         movements=draw(db, account.user_id, taken, now), job_id=hold.job_id,
         attempt=hold.attempt, reason="captured after the hold expired")
    log.warning("captured after the hold expired", extra={**ids, "amount": taken})
    return CloseResult("captured", hold, taken)


def release(db: Session, account: Account | None, job_id: uuid.UUID, attempt: int, reason: str,
            now: datetime) -> CloseResult:
    """The job failed, was cancelled, or its hold expired: the credits go back
    to the lots they came from."""
    hold = _hold_to_close(db, account, job_id, attempt, "release", HoldStatus.RELEASED)
    if isinstance(hold, CloseResult):
        return hold
    if hold.status == HoldStatus.CAPTURED:
        log.error("release refused: the hold was captured",
                  extra={"job_id": str(job_id), "attempt": attempt, "hold_id": str(hold.id)})
        return CloseResult("refused", hold)
    taken = hold_movements(db, hold, "hold")
    post(db, account, kind="release", key=hold_key(job_id, attempt, "release"), amount=hold.amount,
         held_change=-hold.amount, now=now, movements=[(lot, -delta) for lot, delta in taken],
         job_id=job_id, attempt=attempt, hold_id=hold.id, reason=reason)
    hold.status, hold.release_reason, hold.closed_at = HoldStatus.RELEASED, reason, now
    return CloseResult("released", hold, hold.amount)


def held_from_lot(db: Session, lot_id: uuid.UUID) -> int:
    """Credits of the lot that open holds have drawn (a release gives them back)."""
    return int(db.scalar(
        select(func.coalesce(-func.sum(LotMovement.amount), 0))
        .join(LedgerEntry, LedgerEntry.id == LotMovement.entry_id)
        .join(Hold, Hold.id == LedgerEntry.hold_id)
        .where(LotMovement.lot_id == lot_id, LedgerEntry.kind == "hold",
               Hold.status == HoldStatus.OPEN)
    ))


def hold_movements(db: Session, hold: Hold, kind: str) -> list[tuple[Lot, int]]:
    """What the hold's ``hold`` or ``release`` entry did to each lot."""
    entry = find_entry(db, hold_key(hold.job_id, hold.attempt, kind))
    if entry is None:
        return []
    return [tuple(row) for row in db.execute(
        select(Lot, LotMovement.amount).join(LotMovement, LotMovement.lot_id == Lot.id)
        .where(LotMovement.entry_id == entry.id).order_by(Lot.id))]


def stale_holds(db: Session, older_than: datetime, limit: int) -> list[Hold]:
    return list(db.scalars(
        select(Hold).where(Hold.status == HoldStatus.OPEN, Hold.created_at <= older_than)
        .order_by(Hold.created_at).limit(limit)
    ))


# ---------------------------------------------------------------- adjustments


def adjust(db: Session, account: Account, amount: int, reason: str, key: str,
           now: datetime) -> tuple[LedgerEntry, bool]:
    """An operator's correction. Positive: a lot that never expires; negative:
    taken from the lots expiring first (never below zero). The same key again
    returns the first entry; with another amount or reason, 409."""
    full_key = f"adjust:{account.user_id}:{key}"
    existing = find_entry(db, full_key)
    if existing is not None:
        if existing.amount != amount or existing.reason != reason:
            raise conflict("this idempotency key was used for another adjustment",
                           code="idempotency_key_reused")
        return existing, False
    if amount > 0:
        return credit(db, account, kind="adjustment", key=full_key, credits=amount, now=now,
                      expires_at=None, reason=reason)
    can_spend = spendable(db, account, now)
    if can_spend < -amount:
        raise insufficient_credits(-amount, can_spend)
    entry = post(db, account, kind="adjustment", key=full_key, amount=amount, held_change=0,
                 now=now, movements=draw(db, account.user_id, -amount, now), reason=reason)
    return entry, True


# ---------------------------------------------------------------- reading


def view(entry: LedgerEntry) -> dict:
    return {
        "id": entry.id, "kind": entry.kind, "amount": entry.amount,
        "held_change": entry.held_change, "balance_after": entry.balance_after,
        "job_id": entry.job_id, "order_id": entry.order_id, "created_at": entry.created_at,
        "expires_at": entry.expires_at, "attempt": entry.attempt, "reason": entry.reason,
    }


def list_entries(db: Session, user_id: uuid.UUID, limit: int,
                 cursor: str | None) -> tuple[list[LedgerEntry], str | None]:
    """A page of the user's entries, newest first. Keyed on the entry's
    sequence number: entries written in one transaction share a time."""
    stmt = select(LedgerEntry).where(LedgerEntry.user_id == user_id)
    if cursor:
        stmt = stmt.where(LedgerEntry.seq < decode_seq_cursor(cursor))
    rows = list(db.scalars(stmt.order_by(LedgerEntry.seq.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_seq_cursor(rows[-1].seq)
