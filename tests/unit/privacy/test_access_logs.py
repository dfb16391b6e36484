"""Access logs: stored once per fact (a batch in one transaction, a
redelivered or concurrently delivered batch once), never for an erased user,
purged past their retention, exported with the rest of the privacy service's
data."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from nameko.testing.services import worker_factory
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway import access_log as gateway_access_log
from services.common import contracts
from services.common.ids import pseudonym
from services.privacy import access_logs, own_data
from services.privacy.models import AccessLog, ErasedSubject
from services.privacy.service import PrivacyService
from tests.unit.privacy.conftest import NOW


def fact(user_id, at=NOW, **fields) -> dict:
    return {"id": uuid.uuid4(), "user_id": user_id, "at": at, "method": "GET",
            "route": "/v1/images/<uuid:image_id>", "status": 200, "network": "203.0.113.0/24",
            **fields}


def test_a_fact_is_stored_once(db, settings, user):
    event = fact(user)
    assert access_logs.store(db, settings.pseudonym_key, event) is True
    db.commit()
    assert access_logs.store(db, settings.pseudonym_key, event) is False
    assert access_logs.store(db, settings.pseudonym_key, fact(None)) is True  # anonymous
    db.commit()
    assert [a.route for a in access_logs.for_user(db, user)] == ["/v1/images/<uuid:image_id>"]
    assert db.query(AccessLog).count() == 2


def test_an_erased_users_late_facts_are_dropped(db, settings, user):
    subject = pseudonym(settings.pseudonym_key, user)
    assert subject.startswith("psn:") and str(user) not in subject
    assert subject != pseudonym(b"another key", user)
    db.add(ErasedSubject(subject=subject, erased_at=NOW))
    db.commit()
    assert access_logs.store(db, settings.pseudonym_key, fact(user)) is False
    assert access_logs.store(db, settings.pseudonym_key, fact(uuid.uuid4())) is True


def test_facts_past_their_retention_are_purged_in_batches(db, settings, user):
    for days in (200, 181, 179, 1):
        access_logs.store(db, settings.pseudonym_key, fact(user, at=NOW - timedelta(days=days)))
    db.commit()
    assert access_logs.purge(db, NOW, 180, batch=1) == 1
    assert access_logs.purge(db, NOW, 180, batch=10) == 1
    assert access_logs.purge(db, NOW, 180) == 0
    db.commit()
    kept = sorted((NOW - a.at).days for a in access_logs.for_user(db, user))
    assert kept == [1, 179]


def test_the_privacy_part_of_an_export_holds_consents_requests_and_logs(db, settings, user):
    access_logs.store(db, settings.pseudonym_key, fact(user))
    own_data.set_restricted(db, user, True, NOW)
    db.commit()
    data = own_data.export(db, user, 180)
    assert data["processing_restricted"] is True
    assert data["consents"] == {"marketing_email": False, "analytics": False,
                                "preferences": False}
    assert data["access_log"] == [{"at": "2026-11-22T12:00:00Z", "method": "GET",
                                   "route": "/v1/images/<uuid:image_id>", "status": 200,
                                   "network": "203.0.113.0/24"}]
    assert "180 days" in data["about"]
    assert own_data.erase(db, user) == {"consent_changes": 0, "region_refusals": 0,
                                        "policy_acceptances": 0, "restrictions": 1,
                                        "access_logs": 1}
    assert own_data.export(db, user, 180)["access_log"] == []


# ---------------------------------------------------------------- batches


def batch_event(facts: list[dict]) -> dict:
    """The gateway's event, as the privacy handler receives it (through its contract)."""
    body = contracts.make_event(gateway_access_log.EVENT, {"entries": [
        {**f, "id": str(f["id"]), "user_id": None if f["user_id"] is None else str(f["user_id"]),
         "at": f["at"].isoformat()} for f in facts]})
    return contracts.load_event(gateway_access_log.EVENT, body)


def rows(db: Session) -> dict[uuid.UUID, AccessLog]:
    db.expire_all()
    return {a.id: a for a in db.scalars(select(AccessLog))}


class Statements:
    """The SELECTs and INSERTs a session sends while counting."""

    def __init__(self, db: Session):
        self.seen: list[str] = []
        sa_event.listen(db.get_bind(), "before_cursor_execute", self.record)
        self.engine = db.get_bind()

    def record(self, conn, cursor, statement, parameters, context, executemany):
        self.seen.append(statement.split()[0].upper())

    def close(self):
        sa_event.remove(self.engine, "before_cursor_execute", self.record)


@pytest.fixture
def handler(db, settings):
    return worker_factory(PrivacyService, db=db, settings=settings)


def test_a_full_batch_is_stored_in_one_transaction_with_one_query_and_a_few_inserts(
        db, settings, handler):
    users = [uuid.uuid4() for _ in range(3)]
    facts = [fact(users[i % 3], status=200 + i % 300)
             for i in range(gateway_access_log.BATCH_MAX - 1)] + [fact(None)]
    statements = Statements(db)
    commits = []
    sa_event.listen(db, "after_commit", lambda session: commits.append(1))
    try:
        handler.requests_logged(batch_event(facts))
    finally:
        statements.close()
    assert len(commits) == 1
    assert statements.seen.count("SELECT") == 1  # the erased users
    # SQLite: pages of 256, 128, 64, 32, 16 and 4 rows (one statement on PostgreSQL:
    # tests/integration/test_access_log_store.py)
    assert statements.seen.count("INSERT") == 6
    stored = rows(db)
    assert set(stored) == {f["id"] for f in facts}
    kept = stored[facts[4]["id"]]
    assert (kept.user_id, kept.status, kept.route, kept.at) == (
        users[1], 204, "/v1/images/<uuid:image_id>", NOW)
    assert stored[facts[-1]["id"]].user_id is None


def test_batches_of_every_size_use_a_few_statement_texts(db, settings):
    """SQLite's driver keeps prepared statements by their text: a text per
    batch size would keep hundreds of large statements in memory."""
    texts: set[str] = set()

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT"):
            texts.add(statement)

    sa_event.listen(db.get_bind(), "before_cursor_execute", record)
    try:
        stored = 0
        for size in range(1, gateway_access_log.BATCH_MAX + 1, 7):
            stored += access_logs.store_all(db, settings.pseudonym_key,
                                            [fact(None) for _ in range(size)])
        db.commit()
    finally:
        sa_event.remove(db.get_bind(), "before_cursor_execute", record)
    assert len(texts) <= len(access_logs.SQLITE_PAGES)
    assert stored == db.scalar(select(func.count()).select_from(AccessLog)) == sum(
        range(1, gateway_access_log.BATCH_MAX + 1, 7))


def test_a_redelivered_batch_stores_each_fact_once(db, settings, handler, user):
    facts = [fact(user), fact(None), fact(uuid.uuid4())]
    event = batch_event(facts)
    handler.requests_logged(event)
    handler.requests_logged(event)  # the broker delivers it again
    assert len(rows(db)) == 3
    # a later batch that repeats one of them adds only the new ones
    again = fact(user)
    handler.requests_logged(batch_event([facts[0], again]))
    assert set(rows(db)) == {f["id"] for f in facts} | {again["id"]}
    # a batch that names one fact twice keeps it once
    twice = fact(None)
    assert access_logs.store_all(db, settings.pseudonym_key, [twice, twice]) == 1
    db.commit()
    assert db.scalar(select(func.count()).select_from(AccessLog)) == 5


def test_an_erased_users_facts_in_a_mixed_batch_are_dropped_the_others_kept(
        db, settings, handler, user):
    db.add(ErasedSubject(subject=pseudonym(settings.pseudonym_key, user), erased_at=NOW))
    db.commit()
    other = uuid.uuid4()
    erased = [fact(user), fact(user, status=401)]
    kept = [fact(other), fact(None), fact(other, status=404)]
    handler.requests_logged(batch_event([erased[0], kept[0], kept[1], erased[1], kept[2]]))
    stored = rows(db)
    assert set(stored) == {f["id"] for f in kept}
    assert user not in {a.user_id for a in stored.values()}
    assert access_logs.erased_users(db, settings.pseudonym_key, {user, other}) == {user}


def race_between_check_and_insert(db, monkeypatch, entries):
    """Another delivery commits ``entries`` at this one's check for erased
    users, before its insert. Returns the batch sizes the handler's
    store_all calls saw."""
    real_store, real_erased = access_logs.store_all, access_logs.erased_users
    calls: list[int] = []

    def store(session, key, batch):
        calls.append(len(batch))
        return real_store(session, key, batch)

    def erased(session, key, users):
        if len(calls) == 1 and not raced:
            raced.append(True)
            with Session(db.get_bind()) as other:  # the other delivery wins the race
                real_store(other, key, entries)
                other.commit()
        return real_erased(session, key, users)

    raced: list[bool] = []
    monkeypatch.setattr(access_logs, "store_all", store)
    monkeypatch.setattr(access_logs, "erased_users", erased)
    return calls


def test_the_same_batch_delivered_twice_at_once_ends_as_one_row_per_fact(
        db, settings, handler, monkeypatch):
    """Another worker commits the same batch between this one's check for
    erased users and its insert: the insert skips what is there now, once."""
    facts = [fact(uuid.uuid4()) for _ in range(4)]
    event = batch_event(facts)
    calls = race_between_check_and_insert(db, monkeypatch, event["entries"])
    handler.requests_logged(event)
    assert calls == [4]
    assert set(rows(db)) == {f["id"] for f in facts}


def test_a_batch_that_overlaps_a_concurrent_one_keeps_its_other_facts(
        db, settings, handler, monkeypatch):
    facts = [fact(uuid.uuid4()) for _ in range(4)]
    event = batch_event(facts)
    calls = race_between_check_and_insert(db, monkeypatch, event["entries"][:2])  # two of the four
    handler.requests_logged(event)
    assert calls == [4]
    assert set(rows(db)) == {f["id"] for f in facts}
