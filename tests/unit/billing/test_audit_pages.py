"""The ledger verification page by page on SQLite (``make dev``): pages in
user id order cover every account once, a problem is found on its page,
entries of a user without an account after the last one on the last page,
and the whole-ledger call finds what the pages find."""

from __future__ import annotations

import uuid

from sqlalchemy import update

from services.billing import audit, plans
from services.billing.models import Account, LedgerEntry
from tests.unit.billing.conftest import NOW


def walk(db, limit: int) -> list[dict]:
    pages, after = [], None
    while True:
        pages.append(audit.verify_page(db, after, limit))
        after = pages[-1]["next_after"]
        if after is None:
            return pages


def test_pages_cover_every_account_and_find_problems_where_they_are(db, settings, events):
    users = sorted(uuid.uuid4() for _ in range(7))
    for user_id in users:
        plans.open_account(db, settings, user_id, NOW, events)
    db.commit()

    pages = walk(db, 3)
    assert [p["accounts_checked"] for p in pages] == [3, 3, 1]
    assert [p["next_after"] for p in pages] == [users[2], users[5], None]
    assert all(p["problems"] == [] for p in pages)
    assert audit.count_accounts(db) == 7

    # a balance edited by hand on the second page; entries moved to a user with
    # no account, after every account
    db.execute(update(Account).where(Account.user_id == users[4]).values(available=999))
    orphan = uuid.UUID(int=2**128 - 1)
    db.execute(update(LedgerEntry).where(LedgerEntry.user_id == users[6]).values(user_id=orphan))
    db.commit()
    pages = walk(db, 3)
    found = [{(p["user_id"], p["problem"].split(":")[0]) for p in page["problems"]}
             for page in pages]
    assert found[0] == set()
    assert (str(users[4]), "available_mismatch") in found[1]
    assert {u for u, _ in found[1]} == {str(users[4])}
    assert (str(orphan), "orphan_entries") in found[2]
    whole = audit.verify_ledger(db)
    assert whole["accounts_checked"] == 7
    assert {(p["user_id"], p["problem"].split(":")[0]) for p in whole["problems"]} == \
        found[0] | found[1] | found[2]
    assert len(audit.verify_page(db, None, 7, max_problems=1)["problems"]) == 1


def test_a_walk_of_steps_carries_its_problem_count_and_keeps_the_cap(db, settings, events,
                                                                      monkeypatch):
    users = sorted(uuid.uuid4() for _ in range(5))
    for user_id in users:
        plans.open_account(db, settings, user_id, NOW, events)
    db.execute(update(Account).where(Account.user_id.in_(users[1:4])).values(held=1))
    db.commit()
    monkeypatch.setattr(audit, "MAX_PROBLEMS", 3)  # each broken account has two problems
    answers, finished, cursor = [], [], None
    while True:
        answer, walk_problems = audit.verify_step(db, 2, cursor)
        answers.append(answer)
        finished.append(walk_problems)
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    assert [a["accounts_checked"] for a in answers] == [2, 2, 1]
    assert [a["accounts_total"] for a in answers] == [5, None, None]
    assert finished == [None, None, 3]  # reported once, at the end: at most the cap
    assert [len(a["problems"]) for a in answers] == [2, 1, 0]
