"""Retention: expiry, plan changes, the purge (with a fixed clock), the orphan
sweep and the report, against in-memory SQLite and an in-memory store."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from services.common.ids import new_id
from services.storage import retention
from services.storage.backends.keys import new_public_id, public_key
from services.storage.models import (
    COMMITTED,
    PENDING,
    OwnerRetention,
    PurgeBatch,
    StoredObject,
    UploadSlot,
)
from services.storage.settings import StorageSettings
from tests.unit.events import Events
from tests.unit.storage.conftest import NOW
from tests.unit.storage.fakes import StoreDown

GRACE = timedelta(hours=1)


@pytest.fixture
def settings() -> StorageSettings:
    return StorageSettings(retention_days=30, export_retention_days=7, purge_batch_size=500,
                           orphan_grace_seconds=int(GRACE.total_seconds()))


@pytest.fixture
def events() -> Events:
    return Events("storage")


def stored(db, backend, owner=None, *, kind="upload", status=COMMITTED, created_at=NOW,
           expires_at=None, deleted_at=None, size=10, with_bytes=True) -> StoredObject:
    owner = owner or new_id()
    oid = new_id()
    obj = StoredObject(
        id=oid, owner_id=owner, kind=kind, status=status, content_type="image/png", size=size,
        sha256="0" * 64, key=f"objects/{owner}/{oid}", created_at=created_at,
        committed_at=created_at if status == COMMITTED else None,
        expires_at=expires_at if status == COMMITTED else None, deleted_at=deleted_at,
    )
    db.add(obj)
    db.commit()
    if with_bytes:
        backend.add(obj.key, b"b" * size, last_modified=created_at)
    return obj


def live_ids(db) -> set[uuid.UUID]:
    return set(db.scalars(select(StoredObject.id).where(StoredObject.deleted_at.is_(None))))


def audits(db, reason: str) -> list[PurgeBatch]:
    return list(db.scalars(select(PurgeBatch).where(PurgeBatch.reason == reason)
                           .order_by(PurgeBatch.started_at)))


# ---------------------------------------------------------------- expiry


def test_expiry_follows_the_kind_and_the_owners_plan(db, settings):
    owner, other = new_id(), new_id()
    assert retention.expiry(db, settings, owner, "upload", NOW) == NOW + timedelta(days=30)
    assert retention.expiry(db, settings, owner, "output", NOW) == NOW + timedelta(days=30)
    assert retention.expiry(db, settings, owner, "export", NOW) == NOW + timedelta(days=7)
    retention.apply_plan_change(db, owner, "pro", 90, NOW)
    db.commit()
    assert retention.expiry(db, settings, owner, "output", NOW) == NOW + timedelta(days=90)
    assert retention.expiry(db, settings, owner, "export", NOW) == NOW + timedelta(days=7)
    assert retention.expiry(db, settings, other, "output", NOW) == NOW + timedelta(days=30)
    assert retention.longest_plan_retention(db) == 90


def test_plan_change_moves_the_expiry_of_live_uploads_and_outputs_only(db, backend):
    owner = new_id()
    created = NOW - timedelta(days=10)
    upload = stored(db, backend, owner, created_at=created, expires_at=created + timedelta(days=30))
    output = stored(db, backend, owner, kind="output", created_at=created,
                    expires_at=created + timedelta(days=30))
    export = stored(db, backend, owner, kind="export", created_at=created,
                    expires_at=created + timedelta(days=7))
    gone = stored(db, backend, owner, created_at=created, expires_at=created + timedelta(days=30),
                  deleted_at=NOW)
    pending = stored(db, backend, owner, kind="output", status=PENDING, created_at=created)
    someone_else = stored(db, backend, created_at=created, expires_at=created + timedelta(days=30))

    assert retention.apply_plan_change(db, owner, "free", 3, NOW) == 2
    db.commit()
    for obj in (upload, output, export, gone, pending, someone_else):
        db.refresh(obj)
    assert upload.expires_at == output.expires_at == created + timedelta(days=3)
    assert export.expires_at == created + timedelta(days=7)
    assert gone.expires_at == someone_else.expires_at == created + timedelta(days=30)
    assert pending.expires_at is None
    own = db.get(OwnerRetention, owner)
    assert (own.plan, own.retention_days, own.updated_at) == ("free", 3, NOW)


def test_an_older_plan_event_never_overrides_a_newer_one(db, backend):
    owner = new_id()
    obj = stored(db, backend, owner, expires_at=NOW + timedelta(days=30))
    retention.apply_plan_change(db, owner, "pro", 365, NOW)
    assert retention.apply_plan_change(db, owner, "free", 3, NOW - timedelta(minutes=1)) is None
    db.commit()
    db.refresh(obj)
    assert db.get(OwnerRetention, owner).plan == "pro"
    assert obj.expires_at == NOW + timedelta(days=365)


# ---------------------------------------------------------------- purge


def test_purge_takes_exactly_the_expired_committed_live_set(db, backend, settings, events):
    expired = [
        stored(db, backend, created_at=NOW - timedelta(days=31), expires_at=NOW - timedelta(days=1),
               size=100),
        stored(db, backend, kind="output", expires_at=NOW - timedelta(seconds=1), size=20),
        stored(db, backend, kind="export", expires_at=NOW, size=3),  # due at this very instant
    ]
    kept = [
        stored(db, backend, expires_at=NOW + timedelta(seconds=1)),
        stored(db, backend, kind="output", status=PENDING, created_at=NOW - timedelta(days=90)),
    ]
    already = stored(db, backend, expires_at=NOW - timedelta(days=2), deleted_at=NOW - timedelta(days=1),
                     with_bytes=False)

    result = retention.purge_batch(db, backend, settings, NOW, None, events)

    assert set(result.object_ids) == {o.id for o in expired}
    assert (result.objects, result.bytes, result.failed_keys) == (3, 123, [])
    assert sorted(backend.deleted) == sorted(o.key for o in expired)
    assert all(o.key in backend.objects for o in kept)
    assert live_ids(db) == {o.id for o in kept}
    db.refresh(already)
    assert already.deleted_at == NOW - timedelta(days=1)

    [audit] = audits(db, "retention")
    assert (audit.id, audit.objects, audit.bytes, audit.started_at) == (result.batch_id, 3, 123, NOW)
    assert audit.finished_at >= audit.started_at
    [event] = events.of("objects_purged")
    assert sorted(event["object_ids"]) == sorted(str(o.id) for o in expired)
    assert (event["count"], event["bytes"], event["batch_id"]) == (3, 123, str(result.batch_id))

    assert retention.purge_batch(db, backend, settings, NOW, None, events) is None
    assert len(events.seen) == 1 and len(audits(db, "retention")) == 1


def test_purge_runs_in_batches_oldest_expiry_first(db, backend, settings, events):
    objs = [stored(db, backend, expires_at=NOW - timedelta(hours=h), size=h + 1) for h in range(5, 0, -1)]

    first = retention.purge_batch(db, backend, settings, NOW, 2, events)
    assert set(first.object_ids) == {objs[0].id, objs[1].id}

    totals = retention.purge_expired(db, backend, settings, NOW, events, batch_size=2)
    assert totals == {"dry_run": False, "batches": 2, "objects": 3, "bytes": 4 + 3 + 2}
    assert live_ids(db) == set()
    assert [a.objects for a in audits(db, "retention")] == [2, 2, 1]
    purged = [i for e in events.of("objects_purged") for i in e["object_ids"]]
    assert sorted(purged) == sorted(str(o.id) for o in objs)  # each object once


def test_dry_run_counts_and_touches_nothing(db, backend, settings, events):
    for size in (5, 7, 11):
        stored(db, backend, expires_at=NOW - timedelta(days=1), size=size)
    stored(db, backend, expires_at=NOW + timedelta(days=1), size=1000)
    before = dict(backend.objects)

    assert retention.purge_expired(db, backend, settings, NOW, events, batch_size=2, dry_run=True) == {
        "dry_run": True, "batches": 2, "objects": 3, "bytes": 23,
    }
    assert backend.objects == before and len(live_ids(db)) == 4
    assert events.seen == [] and audits(db, "retention") == []


def test_an_interrupted_purge_resumes_and_purges_each_object_once(db, backend, settings, events):
    objs = [stored(db, backend, expires_at=NOW - timedelta(minutes=m)) for m in range(10, 0, -1)]
    backend.raise_after = 3  # the store goes away after 3 deletions

    with pytest.raises(StoreDown):
        retention.purge_expired(db, backend, settings, NOW, events, batch_size=5)

    assert len(backend.deleted) == 3  # bytes gone...
    assert live_ids(db) == {o.id for o in objs}  # ...but no row tombstoned
    assert events.seen == [] and audits(db, "retention") == []

    backend.raise_after = None
    totals = retention.purge_expired(db, backend, settings, NOW, events, batch_size=5)
    assert (totals["objects"], totals["batches"]) == (10, 2)
    assert live_ids(db) == set() and backend.objects == {}
    purged = [i for e in events.of("objects_purged") for i in e["object_ids"]]
    assert sorted(purged) == sorted(str(o.id) for o in objs)
    assert sum(a.objects for a in audits(db, "retention")) == 10


def test_keys_the_store_fails_to_delete_stay_for_a_later_batch(db, backend, settings, events):
    stuck, fine = (stored(db, backend, expires_at=NOW - timedelta(days=1)) for _ in range(2))
    backend.refuse = {stuck.key}

    result = retention.purge_batch(db, backend, settings, NOW, None, events)
    assert (result.object_ids, result.failed_keys) == ([fine.id], [stuck.key])
    assert live_ids(db) == {stuck.id}

    # the store keeps refusing: the loop stops instead of spinning
    assert retention.purge_expired(db, backend, settings, NOW, events)["objects"] == 0
    backend.refuse = set()
    assert retention.purge_expired(db, backend, settings, NOW, events)["objects"] == 1
    assert live_ids(db) == set()


def test_purge_with_a_clock_moving_forward(db, backend, settings, events):
    """The same rows, purged as the clock passes their expiries."""
    soon = stored(db, backend, expires_at=NOW + timedelta(days=1))
    later = stored(db, backend, expires_at=NOW + timedelta(days=30))
    assert retention.purge_expired(db, backend, settings, NOW, events)["objects"] == 0
    assert retention.purge_expired(db, backend, settings, NOW + timedelta(days=2), events)["objects"] == 1
    assert live_ids(db) == {later.id} and soon.key not in backend.objects
    assert retention.purge_expired(db, backend, settings, NOW + timedelta(days=30), events)["objects"] == 1


# ---------------------------------------------------------------- orphans


def slot(db, owner, *, expires_at, finished=False) -> UploadSlot:
    sid = new_id()
    s = UploadSlot(id=sid, owner_id=owner, key=f"staging/{sid}", created_at=expires_at - timedelta(minutes=15),
                   expires_at=expires_at, finished_at=NOW - 2 * GRACE if finished else None)
    db.add(s)
    db.commit()
    return s


def test_orphan_sweep_deletes_only_unaccounted_bytes_past_the_grace(db, backend, settings):
    old = NOW - GRACE - timedelta(seconds=1)
    young = NOW - GRACE + timedelta(minutes=5)
    owner = new_id()
    committed = stored(db, backend, owner, created_at=old, expires_at=NOW + timedelta(days=1))
    expired_not_purged = stored(db, backend, owner, created_at=old, expires_at=NOW - timedelta(days=1))
    pending_young = stored(db, backend, owner, kind="output", status=PENDING, created_at=young)
    pending_old = stored(db, backend, owner, kind="output", status=PENDING, created_at=old, size=7)
    pending_old_no_bytes = stored(db, backend, owner, kind="output", status=PENDING, created_at=old,
                                  with_bytes=False)
    tombstone = stored(db, backend, owner, created_at=old, expires_at=NOW, deleted_at=NOW, size=5)
    crashed = f"objects/{owner}/{new_id()}"  # bytes written, then a crash before the commit
    backend.add(crashed, b"12345678", last_modified=old)
    backend.add(f"objects/{owner}/{new_id()}", b"young", last_modified=young)
    backend.add(f"objects/{owner}/not-a-uuid", b"???", last_modified=old)

    open_slot = slot(db, owner, expires_at=NOW + timedelta(minutes=5))
    expired_slot = slot(db, owner, expires_at=NOW - timedelta(minutes=5))
    finished_slot = slot(db, owner, expires_at=NOW + timedelta(minutes=5), finished=True)
    ancient_slot = slot(db, owner, expires_at=NOW - 2 * GRACE)
    for s in (open_slot, expired_slot, finished_slot):
        backend.add(s.key, b"s", last_modified=old)
    unknown_staging = f"staging/{new_id()}"
    backend.add(unknown_staging, b"u", last_modified=old)
    young_unknown_staging = f"staging/{new_id()}"
    backend.add(young_unknown_staging, b"y", last_modified=young)

    result = retention.sweep_orphans(db, backend, settings, NOW)

    doomed = {
        pending_old.key, tombstone.key, f"objects/{owner}/not-a-uuid",
        expired_slot.key, finished_slot.key, unknown_staging, crashed,
    }
    assert set(result.keys) == doomed == set(backend.deleted)
    assert result.bytes == 7 + 5 + 3 + 1 + 1 + 1 + 8
    for obj in (committed, expired_not_purged, pending_young):
        assert obj.key in backend.objects
    assert open_slot.key in backend.objects and young_unknown_staging in backend.objects
    assert live_ids(db) == {committed.id, expired_not_purged.id, pending_young.id}
    assert {pending_old.id, pending_old_no_bytes.id} <= set(
        db.scalars(select(StoredObject.id).where(StoredObject.deleted_at == NOW))
    )
    assert result.stale_pending == 2
    # slots expired for longer than the grace period are forgotten
    assert result.expired_slots == 1 and db.get(UploadSlot, ancient_slot.id) is None
    assert db.get(UploadSlot, expired_slot.id) is not None

    [audit] = audits(db, "orphan")
    assert (audit.id, audit.objects, audit.bytes) == (result.batch_id, 6 + 1, result.bytes)

    again = retention.sweep_orphans(db, backend, settings, NOW)
    assert (again.keys, again.batch_id) == ([], None) and len(audits(db, "orphan")) == 1


def test_orphan_sweep_keeps_what_the_store_failed_to_delete_for_next_time(db, backend, settings):
    key = f"objects/{new_id()}/{new_id()}"
    backend.add(key, b"abc", last_modified=NOW - 2 * GRACE)
    backend.refuse = {key}
    result = retention.sweep_orphans(db, backend, settings, NOW)
    assert (result.keys, result.failed_keys, result.batch_id) == ([], [key], None)
    backend.refuse = set()
    assert retention.sweep_orphans(db, backend, settings, NOW).keys == [key]


# ---------------------------------------------------------------- report


def test_report_counts_by_kind_age_expiry_and_tombstones(db, backend):
    stored(db, backend, created_at=NOW - timedelta(days=1), expires_at=NOW + timedelta(days=29), size=10)
    stored(db, backend, kind="output", created_at=NOW - timedelta(days=8),
           expires_at=NOW + timedelta(days=22), size=20)
    stored(db, backend, kind="output", created_at=NOW - timedelta(days=40),
           expires_at=NOW - timedelta(days=10), size=40)
    stored(db, backend, kind="export", created_at=NOW - timedelta(days=2),
           expires_at=NOW + timedelta(days=5), size=80)
    stored(db, backend, created_at=NOW - timedelta(days=3), expires_at=NOW, deleted_at=NOW, size=1000)
    stored(db, backend, kind="output", status=PENDING, created_at=NOW, size=2000)

    assert retention.report(db, NOW) == {
        "by_kind": {"upload": {"objects": 1, "bytes": 10}, "output": {"objects": 2, "bytes": 60},
                    "export": {"objects": 1, "bytes": 80}},
        "by_age_days": {"0-7": {"objects": 2, "bytes": 90}, "7-30": {"objects": 1, "bytes": 20},
                        "30+": {"objects": 1, "bytes": 40}},
        "expired_pending": {"objects": 1, "bytes": 40},
        "deleted": {"objects": 1},
    }
    assert db.execute(select(func.count()).select_from(StoredObject)).scalar_one() == 6


# ---------------------------------------------------------------- public copies


def published(db, backend, obj: StoredObject, last_modified=NOW) -> str:
    obj.visibility, obj.public_id = "public", new_public_id()
    db.commit()
    backend.add(public_key(obj.public_id), b"p" * obj.size, last_modified=last_modified)
    return public_key(obj.public_id)


def test_the_purge_deletes_an_expired_objects_public_copy_too(db, backend, settings, events):
    expired = stored(db, backend, expires_at=NOW - timedelta(seconds=1), size=4)
    copy = published(db, backend, expired)
    kept = stored(db, backend, expires_at=NOW + timedelta(days=1))
    kept_copy = published(db, backend, kept)
    result = retention.purge_batch(db, backend, settings, NOW, None, events)
    assert result.object_ids == [expired.id] and result.bytes == 4
    assert expired.key not in backend.objects and copy not in backend.objects
    assert kept_copy in backend.objects


def test_an_object_stays_unpurged_while_its_public_copy_cannot_be_deleted(db, backend, settings,
                                                                            events):
    expired = stored(db, backend, expires_at=NOW - timedelta(seconds=1))
    copy = published(db, backend, expired)
    backend.refuse = {copy}
    result = retention.purge_batch(db, backend, settings, NOW, None, events)
    assert result.object_ids == [] and result.failed_keys == [expired.key]
    assert live_ids(db) == {expired.id}  # tried again by a later batch


def test_the_orphan_sweep_deletes_public_copies_of_no_public_object(db, backend, settings):
    old = NOW - GRACE - timedelta(seconds=1)
    public = stored(db, backend, created_at=old, expires_at=NOW + timedelta(days=1))
    live_copy = published(db, backend, public, last_modified=old)
    crashed = public_key(new_public_id())  # copied, then a crash before the commit
    backend.add(crashed, b"c", last_modified=old)
    young = public_key(new_public_id())
    backend.add(young, b"y", last_modified=NOW)
    result = retention.sweep_orphans(db, backend, settings, NOW)
    assert result.keys == [crashed]
    assert live_copy in backend.objects and young in backend.objects
