"""Storage's part of privacy: the list of a user's objects, a big export
part stored as an export object, the erasure counted per table, the schedule."""

from __future__ import annotations

import hashlib
import io
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest

from services.common.ids import new_id
from services.storage import objects
from services.storage import privacy as privacy_data
from services.storage.models import COMMITTED, StoredObject, UploadSlot
from services.storage.settings import StorageSettings
from tests.unit.storage.conftest import NOW


@pytest.fixture
def settings() -> StorageSettings:
    return StorageSettings(retention_days=30, export_retention_days=7)


def add_object(db, backend, owner, kind="output", deleted=False) -> StoredObject:
    data = uuid.uuid4().bytes
    obj = StoredObject(id=new_id(), owner_id=owner, kind=kind, status=COMMITTED,
                       content_type="image/png", size=len(data),
                       sha256=hashlib.sha256(data).hexdigest(), visibility="private",
                       created_at=NOW, committed_at=NOW, expires_at=NOW + timedelta(days=30),
                       deleted_at=NOW if deleted else None)
    obj.key = objects.object_key(owner, obj.id)
    if not deleted:
        backend.put(obj.key, io.BytesIO(data), len(data), obj.content_type)
    db.add(obj)
    db.commit()
    return obj


def test_the_export_lists_the_users_live_objects(db, backend, settings):
    owner, other = new_id(), new_id()
    mine = add_object(db, backend, owner)
    add_object(db, backend, owner, deleted=True)
    add_object(db, backend, other)
    listed = privacy_data.export(db, SimpleNamespace(backend=backend), owner)["objects"]
    assert [o["id"] for o in listed] == [mine.id] and listed[0]["sha256"] == mine.sha256


def test_a_big_part_is_stored_as_a_committed_export_object(db, backend, settings):
    owner, request_id = new_id(), uuid.uuid4()
    obj = objects.store_export(db, backend, settings, owner, request_id, b"PK zip", NOW)
    db.commit()
    assert (obj.kind, obj.status, obj.job_id, obj.size) == ("export", COMMITTED, request_id, 6)
    assert obj.expires_at == NOW + timedelta(days=7)
    assert backend.open(obj.key).read() == b"PK zip"
    assert obj.sha256 == hashlib.sha256(b"PK zip").hexdigest()


def test_the_erasure_counts_rows_objects_and_bytes(db, backend, settings):
    owner, other = new_id(), new_id()
    live = [add_object(db, backend, owner), add_object(db, backend, owner, kind="upload")]
    add_object(db, backend, owner, deleted=True)
    kept = add_object(db, backend, other)
    slot_id = new_id()
    db.add(UploadSlot(id=slot_id, owner_id=owner, key=objects.staging_key(slot_id),
                      created_at=NOW, expires_at=NOW))
    backend.add(objects.staging_key(slot_id), b"half an upload")
    db.commit()
    store = SimpleNamespace(backend=backend)  # the service's object store
    erased = privacy_data.erase(db, store, owner, NOW)
    db.commit()
    assert (erased.objects_deleted, erased.bytes_deleted) == (2, sum(o.size for o in live))
    assert erased.tables == {"objects": 3, "upload_slots": 1, "owner_retention": 0}
    assert set(backend.objects) == {kept.key}
    again = privacy_data.erase(db, store, owner, NOW)
    assert (again.objects_deleted, again.bytes_deleted, set(again.tables.values())) == (0, 0, {0})


def test_the_schedule_comes_from_the_settings(settings):
    items = {i["data"]: i for i in privacy_data.retention_items(settings)}
    assert items["export archives"]["days"] == 7
    assert items["uploads and generated outputs (accounts without a plan retention)"]["days"] == 30
