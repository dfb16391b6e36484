"""The ledger verification on a large ledger in PostgreSQL, a page of accounts
at a time (services/billing/audit.py): pages cover every account once,
each page reads only its own accounts' rows (memory and time bounded by
the page, not the ledger), and problems anywhere in the ledger (first page,
middle, last, entries of users without an account before or after every
account) are found the same way paged or whole."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, insert, text
from sqlalchemy.orm import Session

from services.billing import audit
from services.billing.models import Account, LedgerEntry, Lot, LotMovement

pytestmark = pytest.mark.integration

ACCOUNTS = 2000
DEBITS = 24  # each account: a grant of 100 and 24 debits of 1: 25 entries, 50 000 in all
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def consistent_ledger(user_ids: list[uuid.UUID], debits: int = DEBITS) -> dict[str, list[dict]]:
    """Rows of a ledger that passes every check: per user one lot granted
    100 credits, then ``debits`` entries of -1 taken from it."""
    rows: dict[str, list[dict]] = {"accounts": [], "entries": [], "lots": [], "movements": []}
    for user in user_ids:
        lot = uuid.uuid4()
        rows["lots"].append({"id": lot, "user_id": user, "source": "grant", "credits": 100,
                             "remaining": 100 - debits, "expires_at": None, "order_id": None,
                             "frozen": False, "created_at": NOW})
        balance = 0
        for seq in range(1, debits + 2):
            amount = 100 if seq == 1 else -1
            balance += amount
            entry = uuid.uuid4()
            rows["entries"].append({
                "id": entry, "user_id": user, "seq": seq, "kind": "grant" if seq == 1 else "adjustment",
                "idempotency_key": f"bulk:{user}:{seq}", "amount": amount, "held_change": 0,
                "balance_after": balance, "held_after": 0, "job_id": None, "attempt": None,
                "hold_id": None, "lot_id": lot if seq == 1 else None, "order_id": None,
                "expires_at": None, "reason": None, "created_at": NOW})
            rows["movements"].append({"entry_id": entry, "lot_id": lot, "user_id": user,
                                      "amount": amount})
        rows["accounts"].append({"user_id": user, "plan": "free", "plan_expires_at": None,
                                 "available": balance, "held": 0, "entry_seq": debits + 1,
                                 "granted_period": None, "created_at": NOW, "updated_at": NOW})
    return rows


def write(db: Session, rows: dict[str, list[dict]]) -> None:
    for model, key in ((Account, "accounts"), (Lot, "lots"), (LedgerEntry, "entries"),
                       (LotMovement, "movements")):
        if rows[key]:
            db.execute(insert(model), rows[key])
    db.commit()


@pytest.fixture(scope="module")
def ledger(make_migrated_engine):
    """(engine, the users in id order) of a consistent ledger of ACCOUNTS accounts."""
    engine = make_migrated_engine("billing", pool_size=2)
    users = sorted(uuid.uuid4() for _ in range(ACCOUNTS))
    with Session(engine) as db:
        write(db, consistent_ledger(users))
    return engine, users


class RowsRead:
    """The most rows any one statement returned while it was on."""

    def __init__(self, engine):
        self.engine, self.most, self.statements = engine, 0, 0

    def _seen(self, conn, cursor, statement, parameters, context, executemany):
        self.statements += 1
        self.most = max(self.most, cursor.rowcount)

    def __enter__(self):
        event.listen(self.engine, "after_cursor_execute", self._seen)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "after_cursor_execute", self._seen)


def walk(db: Session, limit: int) -> tuple[list[dict], list[dict]]:
    """Every page from the first: (pages, problems)."""
    pages, problems, after = [], [], None
    while True:
        page = audit.verify_page(db, after, limit)
        pages.append(page)
        problems += page["problems"]
        after = page["next_after"]
        if after is None:
            return pages, problems


def test_pages_cover_every_account_once_and_read_only_their_rows(ledger):
    engine, users = ledger
    limit = 150
    with Session(engine) as db, RowsRead(engine) as read:
        pages, problems = walk(db, limit)
    assert problems == []
    assert len(pages) == math.ceil(ACCOUNTS / limit)
    assert [p["accounts_checked"] for p in pages] == \
        [limit] * (len(pages) - 1) + [ACCOUNTS - limit * (len(pages) - 1)]
    assert [p["next_after"] for p in pages[:-1]] == \
        [users[limit * (i + 1) - 1] for i in range(len(pages) - 1)]
    # no statement returned more rows than the page has accounts (one lot each
    # here): nothing is read for the whole ledger (2 000 accounts, 50 000 entries)
    assert read.statements > 0 and read.most == limit
    with Session(engine) as db:
        assert audit.count_accounts(db) == ACCOUNTS
        whole = audit.verify_ledger(db)
    assert whole == {"accounts_checked": ACCOUNTS, "problems": []}


def corrupt(engine, edits: list[tuple[str, uuid.UUID, int]], sign: int) -> None:
    """Each ``(UPDATE ... :d ..., user, d)`` with ``:d`` = ``sign * d`` (-1 undoes it)."""
    with Session(engine) as db:
        for statement, user, delta in edits:
            db.execute(text(statement), {"u": user, "d": sign * delta})
        db.commit()


def test_problems_anywhere_are_found_paged_and_whole(ledger):
    engine, users = ledger
    first, middle, last = users[0], users[ACCOUNTS // 2], users[-1]
    before = uuid.UUID(int=0)  # entries of users without an account, before and after every one
    beyond = uuid.UUID(int=2**128 - 1)
    edits = [
        ("UPDATE accounts SET available = available + :d WHERE user_id = :u", first, 5),
        ("UPDATE ledger_entries SET balance_after = balance_after + :d "
         "WHERE user_id = :u AND seq = 3", middle, 7),
        ("UPDATE lots SET remaining = remaining + :d WHERE user_id = :u", last, -1),
    ]
    with Session(engine) as db:
        write(db, {**consistent_ledger([before, beyond], debits=1), "accounts": []})
    corrupt(engine, edits, 1)
    try:
        expected = {(str(first), "available_mismatch"), (str(first), "available_vs_lots"),
                    (str(middle), "balance_after_chain"), (str(last), "lot_remaining_mismatch"),
                    (str(last), "available_vs_lots"), (str(before), "orphan_entries"),
                    (str(beyond), "orphan_entries")}
        with Session(engine) as db:
            _, paged = walk(db, 300)
            whole = audit.verify_ledger(db)
        found = {(p["user_id"], p["problem"].split(":")[0]) for p in paged}
        assert found == expected
        assert {(p["user_id"], p["problem"].split(":")[0]) for p in whole["problems"]} == expected
        assert whole["accounts_checked"] == ACCOUNTS

        with Session(engine) as db:  # the cap holds over the pages
            capped = audit.verify_page(db, None, ACCOUNTS, max_problems=1)
        assert len(capped["problems"]) == 1 and capped["next_after"] == last
    finally:
        corrupt(engine, edits, -1)
        with Session(engine) as db:
            for user in (before, beyond):
                for table in ("lot_movements", "ledger_entries", "lots"):
                    db.execute(text(f"DELETE FROM {table} WHERE user_id = :u"), {"u": user})
            db.commit()
        with Session(engine) as db:
            assert audit.verify_ledger(db)["problems"] == []
