"""Objects: upload slots, finishing uploads, output slots and their commit,
owner isolation, visibility, listing, deletion, export and erasure, against
in-memory SQLite and an in-memory store."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import uuid
from datetime import timedelta

import pytest
from PIL import Image
from sqlalchemy import func, select

from services.common.errors import DomainError
from services.common.ids import new_id
from services.storage import images, objects, retention
from services.storage.models import COMMITTED, PENDING, OwnerRetention, StoredObject, UploadSlot
from services.storage.settings import StorageSettings
from tests.unit.storage.conftest import NOW

DEFAULT_PAGE = {"limit": 20, "cursor": None, "kind": None, "job_id": None}


@pytest.fixture
def settings() -> StorageSettings:
    return StorageSettings(retention_days=30, upload_max_bytes=200_000, max_image_pixels=1_000_000,
                           url_ttl_seconds=120, upload_slot_ttl_seconds=600)


@pytest.fixture
def owner() -> uuid.UUID:
    return new_id()


def image_bytes(fmt: str = "PNG", size=(40, 30), exif: Image.Exif | None = None) -> bytes:
    out = io.BytesIO()
    im = Image.new("RGB", size, (200, 30, 60))
    im.save(out, fmt, **({"exif": exif} if exif is not None else {}))
    return out.getvalue()


def gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"  # Make
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}  # GPSInfo
    return exif


def refused(call, *args) -> DomainError:
    with pytest.raises(DomainError) as info:
        call(*args)
    return info.value


def upload(db, backend, settings, owner, data: bytes, now=NOW) -> tuple[dict, DomainError | StoredObject]:
    slot = objects.create_upload_slot(db, backend, settings, owner, now)
    db.commit()
    backend.add(f"staging/{slot['upload_id']}", data)
    try:
        obj, staged = objects.finish_upload(db, backend, settings, owner, slot["upload_id"], now)
    except DomainError as error:
        db.rollback()
        return slot, error
    db.commit()
    backend.delete_many([staged])
    return slot, obj


def output(db, backend, settings, owner, data: bytes, *, job_id=None, kind="output", sha256=None,
           size=None, put: bytes | None = None, now=NOW) -> dict:
    slot = objects.create_output_slot(db, backend, settings, owner, {
        "job_id": job_id or new_id(), "content_type": "image/png", "size": size or len(data),
        "sha256": sha256 or hashlib.sha256(data).hexdigest(), "width": 40, "height": 30, "kind": kind,
    }, now)
    db.commit()
    if put is not None:
        backend.add(f"objects/{owner}/{slot['object_id']}", put)
    return slot


def committed_output(db, backend, settings, owner, now=NOW, **kwargs) -> StoredObject:
    data = image_bytes()
    slot = output(db, backend, settings, owner, data, put=data, now=now, **kwargs)
    [obj] = objects.commit_objects(db, backend, settings, owner, [str(slot["object_id"])], now)
    db.commit()
    return obj


def count(db, model) -> int:
    return db.execute(select(func.count()).select_from(model)).scalar_one()


# ---------------------------------------------------------------- uploads


def test_upload_slot_is_a_presigned_put_to_staging(db, backend, settings, owner):
    slot = objects.create_upload_slot(db, backend, settings, str(owner), NOW)
    db.commit()
    assert slot["url"] == (f"memory://staging/{slot['upload_id']}?method=PUT&ttl=600"
                           f"&max_bytes={settings.upload_max_bytes}")
    assert (slot["method"], slot["max_bytes"], slot["expires_at"]) == ("PUT", 200_000, NOW + timedelta(minutes=10))
    row = db.get(UploadSlot, slot["upload_id"])
    assert (row.owner_id, row.key, row.finished_at) == (owner, f"staging/{slot['upload_id']}", None)


@pytest.mark.parametrize("fmt,content_type", [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                              ("WEBP", "image/webp")])
def test_finished_upload_is_re_encoded_and_stored(db, backend, settings, owner, fmt, content_type):
    slot, obj = upload(db, backend, settings, str(owner), image_bytes(fmt, exif=gps_exif()))
    assert (obj.kind, obj.status, obj.content_type, obj.width, obj.height) == (
        "upload", COMMITTED, content_type, 40, 30)
    assert (obj.owner_id, obj.visibility, obj.created_at) == (owner, "private", NOW)
    assert obj.expires_at == NOW + timedelta(days=30)
    stored = backend.objects[f"objects/{owner}/{obj.id}"][0]
    assert (obj.size, obj.sha256) == (len(stored), hashlib.sha256(stored).hexdigest())
    with Image.open(io.BytesIO(stored)) as im:
        assert im.format == fmt and not im.getexif()
    assert f"staging/{slot['upload_id']}" not in backend.objects

    # finishing again (a retried call) answers the same object
    again, staged = objects.finish_upload(db, backend, settings, owner, slot["upload_id"], NOW)
    assert (again.id, staged) == (obj.id, None)
    assert count(db, StoredObject) == 1


def test_a_plan_retention_sets_the_expiry_of_new_uploads(db, backend, settings, owner):
    retention.apply_plan_change(db, owner, "pro", 90, NOW)
    db.commit()
    _, obj = upload(db, backend, settings, owner, image_bytes())
    assert obj.expires_at == NOW + timedelta(days=90)


def truncated_png() -> bytes:
    data = image_bytes(size=(200, 200))
    return data[: len(data) // 2]


def pixel_bomb() -> bytes:
    """A PNG whose header claims 20000 x 20000 pixels (a few hundred bytes)."""
    data = bytearray(image_bytes(size=(1, 1)))
    data[16:24] = (20000).to_bytes(4, "big") * 2
    return bytes(data)


@pytest.mark.parametrize("data,code,status", [
    (b"GIF89a" + b"\0" * 100, "unsupported_media_type", 415),
    (b"<?php echo 'not an image'; ?>", "unsupported_media_type", 415),
    (truncated_png(), "invalid_image", 400),
    (pixel_bomb(), "image_too_large", 422),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 300_000, "payload_too_large", 413),
])
def test_refused_uploads_write_nothing_and_drop_the_staged_bytes(db, backend, settings, owner, data,
                                                                 code, status):
    slot, error = upload(db, backend, settings, owner, data)
    assert (error.code, error.status) == (code, status)
    assert count(db, StoredObject) == 0
    assert list(backend.list("objects/")) == []
    assert f"staging/{slot['upload_id']}" not in backend.objects
    assert db.get(UploadSlot, slot["upload_id"]).finished_at is None


def test_finishing_someone_elses_unknown_or_expired_slot_is_not_found(db, backend, settings, owner):
    slot = objects.create_upload_slot(db, backend, settings, owner, NOW)
    db.commit()
    backend.add(f"staging/{slot['upload_id']}", image_bytes())
    for who, upload_id, now in [
        (new_id(), slot["upload_id"], NOW),
        (owner, new_id(), NOW),
        (owner, "not-an-id", NOW),
        (owner, slot["upload_id"], NOW + timedelta(minutes=10)),
    ]:
        error = refused(objects.finish_upload, db, backend, settings, who, upload_id, now)
        assert (error.code, error.status) == ("not_found", 404)
    assert count(db, StoredObject) == 0


def test_finishing_before_anything_was_put(db, backend, settings, owner):
    slot = objects.create_upload_slot(db, backend, settings, owner, NOW)
    error = refused(objects.finish_upload, db, backend, settings, owner, slot["upload_id"], NOW)
    assert (error.code, error.status) == ("upload_missing", 400)


def test_a_malformed_owner_id_is_the_callers_error(db, backend, settings):
    error = refused(objects.create_upload_slot, db, backend, settings, "nobody", NOW)
    assert (error.code, error.status) == ("invalid_request", 400)


# ---------------------------------------------------------------- outputs


def test_output_slot_then_commit_with_the_declared_bytes(db, backend, settings, owner):
    data = image_bytes()
    job = new_id()
    slot = output(db, backend, settings, owner, data, job_id=job)
    assert slot["object_id"] == slot["upload_id"]
    assert slot["url"] == (f"memory://objects/{owner}/{slot['object_id']}?method=PUT&ttl=600"
                           f"&max_bytes={len(data)}")
    assert (slot["max_bytes"], slot["headers"]) == (len(data), {"Content-Type": "image/png"})
    row = db.get(StoredObject, slot["object_id"])
    assert (row.status, row.expires_at, row.job_id) == (PENDING, None, job)
    refused_get = refused(objects.get_visible, db, owner, slot["object_id"], NOW)
    assert refused_get.code == "not_found"  # not committed yet

    backend.add(row.key, data)
    later = NOW + timedelta(minutes=3)
    [obj] = objects.commit_objects(db, backend, settings, owner, [str(row.id)], later)
    db.commit()
    assert (obj.status, obj.committed_at, obj.expires_at) == (COMMITTED, later, NOW + timedelta(days=30))
    assert objects.get_visible(db, owner, row.id, later).id == row.id
    # idempotent
    [again] = objects.commit_objects(db, backend, settings, owner, [str(row.id), str(row.id)], later)
    assert (again.id, again.committed_at) == (row.id, later)


def test_an_output_past_the_output_cap_gets_no_slot(db, backend, settings, owner):
    settings = dataclasses.replace(settings, output_max_bytes=1000)
    with pytest.raises(DomainError) as info:
        output(db, backend, settings, owner, b"x", size=1001)
    error = info.value
    assert (error.code, error.status, error.details) == ("payload_too_large", 413,
                                                         {"max_bytes": 1000})
    assert count(db, StoredObject) == 0
    assert output(db, backend, settings, owner, b"x", size=1000)["max_bytes"] == 1000


def test_export_archives_get_the_export_retention(db, backend, settings, owner):
    obj = committed_output(db, backend, settings, owner, kind="export")
    assert obj.expires_at == NOW + timedelta(days=settings.export_retention_days)


@pytest.mark.parametrize("declared,put,reason", [
    ({"sha256": "ab" * 32}, image_bytes(), "sha256"),
    ({"size": 10}, image_bytes(), "size"),
    ({}, None, "missing"),
    ({}, image_bytes()[:-1] + b"!", "sha256"),
    ({}, image_bytes() + b"!", "size"),
])
def test_commit_refuses_bytes_that_differ_from_the_declaration(db, backend, settings, owner, declared,
                                                               put, reason):
    data = image_bytes()
    slot = output(db, backend, settings, owner, data, put=put, **declared)
    error = refused(objects.commit_objects, db, backend, settings, owner, [str(slot["object_id"])], NOW)
    assert (error.code, error.status, error.details["reason"]) == ("object_mismatch", 409, reason)
    assert error.details["object_id"] == str(slot["object_id"])
    db.rollback()
    assert db.get(StoredObject, slot["object_id"]).status == PENDING


def test_commit_is_all_or_nothing_and_owner_checked(db, backend, settings, owner):
    data = image_bytes()
    good = output(db, backend, settings, owner, data, put=data)
    bad = output(db, backend, settings, owner, data, put=b"tampered")
    error = refused(objects.commit_objects, db, backend, settings, owner,
                    [str(good["object_id"]), str(bad["object_id"])], NOW)
    assert error.code == "object_mismatch"
    db.rollback()
    assert db.get(StoredObject, good["object_id"]).status == PENDING

    for who, ids in [(new_id(), [str(good["object_id"])]), (owner, [str(new_id())]), (owner, ["x"])]:
        assert refused(objects.commit_objects, db, backend, settings, who, ids, NOW).code == "not_found"
    for ids in ([], "not a list", [1, 2], [str(new_id())] * 101):
        assert refused(objects.commit_objects, db, backend, settings, owner, ids, NOW).code == "invalid_request"


# ---------------------------------------------------------------- gallery


def test_get_is_owner_only_and_hides_deleted_expired_and_pending(db, backend, settings, owner):
    obj = committed_output(db, backend, settings, owner)
    assert objects.get_visible(db, str(owner), str(obj.id), NOW).id == obj.id
    assert objects.view_with_url(backend, settings, obj)["url"] == f"memory://{obj.key}?method=GET&ttl=120&type={obj.content_type}"
    for who, oid, now in [
        (new_id(), obj.id, NOW),
        (owner, new_id(), NOW),
        (owner, "../etc/passwd", NOW),
        (owner, obj.id, obj.expires_at),
    ]:
        assert refused(objects.get_visible, db, who, oid, now).code == "not_found"


def test_public_objects_are_readable_by_anyone_until_private_again(db, backend, settings, owner):
    obj = committed_output(db, backend, settings, owner)
    assert refused(objects.get_public, db, obj.id, NOW).code == "not_found"
    assert refused(objects.set_visibility, db, backend, new_id(), obj.id, "public",
                   NOW).code == "not_found"
    objects.set_visibility(db, backend, owner, obj.id, "public", NOW)
    db.commit()
    public_id = obj.public_id
    assert objects.get_public(db, public_id, NOW).id == obj.id
    assert refused(objects.get_public, db, str(obj.id), NOW).code == "not_found"  # not by object id
    assert refused(objects.get_public, db, public_id, obj.expires_at).code == "not_found"
    assert backend.objects[f"public/{public_id}"][0] == backend.objects[obj.key][0]
    objects.set_visibility(db, backend, owner, obj.id, "public", NOW)  # again: nothing changes
    assert obj.public_id == public_id
    objects.set_visibility(db, backend, owner, obj.id, "private", NOW)
    db.commit()
    assert obj.public_id is None
    assert refused(objects.get_public, db, public_id, NOW).code == "not_found"
    assert f"public/{public_id}" not in backend.objects  # the old public URL serves nothing
    assert obj.key in backend.objects


def test_public_urls_carry_nothing_of_the_owner_or_the_object(db, backend, settings, owner):
    first, second = (committed_output(db, backend, settings, owner) for _ in range(2))
    for obj in (first, second):
        objects.set_visibility(db, backend, owner, obj.id, "public", NOW)
    db.commit()
    views = [objects.public_view(backend, settings, obj) for obj in (first, second)]
    for view, obj in zip(views, (first, second), strict=True):
        assert str(owner) not in view["url"] and str(obj.id) not in view["url"]
        assert owner.hex not in view["url"] and obj.id.hex not in view["url"]
        assert view["id"] == obj.public_id and len(view["id"]) == 32
    # nothing in common between the two: no path segment, no id
    parts = [set(view["url"].split("?")[0].split("/")[1:]) | {view["id"]} for view in views]
    assert parts[0] & parts[1] <= {"", "public"}
    # made public again: a new public id, the old one is dead
    old = first.public_id
    objects.set_visibility(db, backend, owner, first.id, "private", NOW)
    objects.set_visibility(db, backend, owner, first.id, "public", NOW)
    assert first.public_id not in (None, old)
    assert refused(objects.get_public, db, old, NOW).code == "not_found"


def test_deleting_a_public_object_deletes_its_public_copy(db, backend, settings, owner):
    obj = committed_output(db, backend, settings, owner)
    objects.set_visibility(db, backend, owner, obj.id, "public", NOW)
    public_id = obj.public_id
    objects.delete_object(db, backend, owner, obj.id, NOW)
    db.commit()
    assert f"public/{public_id}" not in backend.objects and obj.key not in backend.objects
    assert refused(objects.get_public, db, public_id, NOW).code == "not_found"


def test_a_store_failing_to_unpublish_keeps_the_object_public(db, backend, settings, owner):
    obj = committed_output(db, backend, settings, owner)
    objects.set_visibility(db, backend, owner, obj.id, "public", NOW)
    db.commit()
    backend.refuse.add(f"public/{obj.public_id}")
    error = refused(objects.set_visibility, db, backend, owner, obj.id, "private", NOW)
    assert (error.code, error.status) == ("storage_unavailable", 503)
    db.rollback()
    assert objects.get_public(db, obj.public_id, NOW).id == obj.id


def test_list_is_newest_first_filtered_and_paged(db, backend, settings, owner):
    job = new_id()
    outputs = [committed_output(db, backend, settings, owner, NOW + timedelta(seconds=i), job_id=job)
               for i in range(3)]
    _, up = upload(db, backend, settings, owner, image_bytes(), now=NOW + timedelta(seconds=10))
    committed_output(db, backend, settings, owner, kind="export")
    committed_output(db, backend, settings, new_id())  # someone else's
    output(db, backend, settings, owner, image_bytes())  # pending
    gone = committed_output(db, backend, settings, owner, NOW + timedelta(seconds=20))
    objects.delete_object(db, backend, owner, gone.id, NOW)
    db.commit()

    later = NOW + timedelta(minutes=1)
    rows, cursor = objects.list_objects(db, owner, DEFAULT_PAGE, later)
    assert [r.id for r in rows] == [up.id] + [o.id for o in reversed(outputs)] and cursor is None

    page1, cursor = objects.list_objects(db, owner, {**DEFAULT_PAGE, "limit": 2}, later)
    page2, end = objects.list_objects(db, owner, {**DEFAULT_PAGE, "limit": 2, "cursor": cursor}, later)
    assert [r.id for r in page1 + page2] == [r.id for r in rows] and end is None

    only_outputs, _ = objects.list_objects(db, owner, {**DEFAULT_PAGE, "kind": "output"}, later)
    assert [r.id for r in only_outputs] == [o.id for o in reversed(outputs)]
    uploads, _ = objects.list_objects(db, owner, {**DEFAULT_PAGE, "kind": "upload"}, later)
    assert [r.id for r in uploads] == [up.id]
    by_job, _ = objects.list_objects(db, owner, {**DEFAULT_PAGE, "job_id": job}, later)
    assert len(by_job) == 3
    none, _ = objects.list_objects(db, owner, {**DEFAULT_PAGE, "job_id": new_id()}, later)
    assert none == []
    expired, _ = objects.list_objects(db, owner, DEFAULT_PAGE, NOW + timedelta(days=31))
    assert expired == []


def test_delete_removes_the_bytes_then_tombstones(db, backend, settings, owner):
    obj = committed_output(db, backend, settings, owner)
    assert refused(objects.delete_object, db, backend, new_id(), obj.id, NOW).code == "not_found"
    assert obj.key in backend.objects

    backend.refuse = {obj.key}
    error = refused(objects.delete_object, db, backend, owner, obj.id, NOW)
    assert (error.code, error.status) == ("storage_unavailable", 503)
    db.rollback()
    assert db.get(StoredObject, obj.id).deleted_at is None

    backend.refuse = set()
    objects.delete_object(db, backend, owner, obj.id, NOW)
    db.commit()
    assert obj.key not in backend.objects
    assert db.get(StoredObject, obj.id).deleted_at == NOW
    assert refused(objects.delete_object, db, backend, owner, obj.id, NOW).code == "not_found"


# ---------------------------------------------------------------- privacy


def test_export_lists_what_is_held_and_erase_forgets_everything(db, backend, settings, owner):
    kept = [committed_output(db, backend, settings, owner) for _ in range(2)]
    pending = output(db, backend, settings, owner, image_bytes(), put=image_bytes())
    slot = objects.create_upload_slot(db, backend, settings, owner, NOW)
    backend.add(f"staging/{slot['upload_id']}", b"staged")
    retention.apply_plan_change(db, owner, "pro", 90, NOW)
    deleted = committed_output(db, backend, settings, owner)
    objects.delete_object(db, backend, owner, deleted.id, NOW)
    other = committed_output(db, backend, settings, new_id())
    db.commit()

    assert [o.id for o in objects.export_user(db, owner)] == [o.id for o in kept]

    backend.refuse = {kept[0].key}
    assert refused(objects.erase_user, db, backend, owner).status == 503
    db.rollback()
    assert len(objects.export_user(db, owner)) == 2  # nothing forgotten yet
    backend.refuse = set()

    erased = objects.erase_user(db, backend, owner)
    db.commit()
    assert (erased["objects"], erased["bytes"]) == (3, sum(o.size for o in kept) + len(image_bytes()))
    assert erased["tables"] == {"objects": 4, "upload_slots": 1, "owner_retention": 1}
    assert [k for k in backend.objects if str(owner) in k or k.endswith(str(slot["upload_id"]))] == []
    assert other.key in backend.objects
    assert db.scalars(select(StoredObject).where(StoredObject.owner_id == owner)).all() == []
    assert db.get(UploadSlot, slot["upload_id"]) is None and db.get(OwnerRetention, owner) is None
    assert objects.erase_user(db, backend, owner) == {
        "objects": 0, "bytes": 0, "tables": {"objects": 0, "upload_slots": 0, "owner_retention": 0}}
    assert objects.export_user(db, owner) == []
    assert f"objects/{owner}/{pending['object_id']}" not in backend.objects


def test_a_source_for_a_service_is_read_at_the_internal_address(db, backend, settings, owner):
    obj = committed_output(db, backend, settings, owner)
    view = objects.source_view(backend, settings, obj)
    assert view["id"] == obj.id and view["content_type"] == "image/png"
    assert view["url"] == f"memory://{obj.key}?method=GET&ttl={settings.url_ttl_seconds}&internal&type={obj.content_type}"
    assert "&internal" not in objects.view_with_url(backend, settings, obj)["url"]


def test_an_upload_waits_for_a_decode_turn_and_is_503_when_none_comes(db, backend, settings,
                                                                        owner, monkeypatch):
    gate = images.DecodeGate(limit=1, wait_seconds=0.05)
    slot = objects.create_upload_slot(db, backend, settings, owner, NOW)
    db.commit()
    backend.add(f"staging/{slot['upload_id']}", image_bytes())
    decoded = []
    monkeypatch.setattr(images, "process_upload", lambda *a, **k: decoded.append(a))
    with gate.slot():  # another upload is decoding
        error = refused(objects.finish_upload, db, backend, settings, owner, slot["upload_id"],
                        NOW, gate)
    assert (error.code, error.status) == ("storage_busy", 503)
    assert decoded == []  # nothing read or decoded while waiting in vain
    db.rollback()
    assert db.scalar(select(func.count()).select_from(StoredObject)) == 0


def test_erasing_a_user_deletes_the_public_copies_too(db, backend, settings, owner):
    obj = committed_output(db, backend, settings, owner)
    objects.set_visibility(db, backend, owner, obj.id, "public", NOW)
    db.commit()
    copy = f"public/{obj.public_id}"
    assert copy in backend.objects
    objects.erase_user(db, backend, owner)
    db.commit()
    assert copy not in backend.objects and obj.key not in backend.objects


# ---------------------------------------------------------------- a job's output URLs


def test_signed_urls_are_the_owners_live_objects_in_the_order_asked(db, backend, settings, owner,
                                                                    monkeypatch):
    first, second, deleted = (committed_output(db, backend, settings, owner) for _ in range(3))
    expired = committed_output(db, backend, settings, owner, now=NOW - timedelta(days=1))
    theirs = committed_output(db, backend, settings, new_id())
    objects.delete_object(db, backend, owner, deleted.id, NOW)
    db.commit()
    statements = []
    monkeypatch.setattr(db, "scalars", lambda stmt, *a, **k: statements.append(stmt) or
                        type(db).scalars(db, stmt, *a, **k))
    asked = [second.id, theirs.id, first.id, deleted.id, new_id(), expired.id, second.id]
    signed = objects.signed_urls(db, backend, settings, str(owner), asked,
                                 expired.expires_at)  # `expired` has just expired
    assert len(statements) == 1  # one query for the lot
    assert [item["id"] for item in signed] == [second.id, first.id]  # asked once, in order
    assert signed[1] == {"id": first.id, "url_expires_at": expired.expires_at + timedelta(
        seconds=120), "url": f"memory://{first.key}?method=GET&ttl=120&type=image/png"}
    assert objects.signed_urls(db, backend, settings, owner, [], NOW) == []
