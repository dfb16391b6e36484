"""Stored objects: upload slots, output slots and their commit, describe,
list, visibility, delete, export and erasure.

Each function works on a session and a backend and leaves the commit to its
caller (the service), except where bytes and rows must change in an order
that survives a crash:

- a user upload is validated and re-encoded, the clean bytes written to
  ``objects/<owner>/<id>``, then the row recorded; the staged original is
  deleted after the commit (a crash in between leaves bytes the orphan sweep
  removes, never a row without bytes);
- a deletion removes the bytes first, then tombstones the row (a failed
  delete leaves the object as it was, visible and retryable);
- making an object public copies its bytes to ``public/<public_id>`` (a
  random id, new each time) before the row says so; making it private (or
  deleting it) deletes that copy first. Its public URLs therefore carry
  nothing of the owner or of the object id, two public objects of one owner
  share nothing, and an object made private stops being served at once.

Another owner's object is "not found", exactly like an unknown one.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterable
from contextlib import nullcontext
from datetime import datetime, timedelta

from sqlalchemy import Select, delete, func, or_, select
from sqlalchemy.orm import Session

from services.common.concurrency import offload
from services.common.db import locked
from services.common.errors import DomainError, invalid_request, not_found, payload_too_large
from services.common.ids import client_id, new_id, trusted_id
from services.common.pagination import paginate
from services.storage import images, retention
from services.storage.backends.base import Backend, storage_unavailable
from services.storage.backends.keys import (
    PUBLIC_ID,
    new_public_id,
    public_key,
    stored_keys,
)
from services.storage.models import COMMITTED, PENDING, OwnerRetention, StoredObject, UploadSlot
from services.storage.settings import StorageSettings

READ_CHUNK = 1024 * 1024
GALLERY_KINDS = ("upload", "output")
MAX_COMMIT = 100


# ---------------------------------------------------------------- errors


def upload_missing() -> DomainError:
    return DomainError("upload_missing", "nothing was uploaded to this slot", 400)


def object_mismatch(object_id: uuid.UUID, reason: str) -> DomainError:
    return DomainError("object_mismatch", f"object {object_id} does not match its declaration: {reason}",
                       409, {"object_id": str(object_id), "reason": reason})


# ---------------------------------------------------------------- ids and views


def object_key(owner_id: uuid.UUID, object_id: uuid.UUID) -> str:
    return f"objects/{owner_id}/{object_id}"


def staging_key(upload_id: uuid.UUID) -> str:
    return f"staging/{upload_id}"


def view(obj: StoredObject) -> dict:
    """The object as ``ImageObject`` wants it (without ``url``)."""
    return {
        "id": obj.id, "kind": obj.kind, "content_type": obj.content_type, "size": obj.size,
        "width": obj.width, "height": obj.height, "sha256": obj.sha256,
        "visibility": obj.visibility, "public_id": obj.public_id, "job_id": obj.job_id,
        "created_at": obj.created_at, "expires_at": obj.expires_at,
    }


def view_with_url(backend: Backend, settings: StorageSettings, obj: StoredObject) -> dict:
    return {**view(obj), "url": backend.presigned_get(obj.key, settings.url_ttl_seconds,
                                                      content_type=obj.content_type)}


def public_view(backend: Backend, settings: StorageSettings, obj: StoredObject) -> dict:
    """What anyone may see of a public object: its public id and a URL of its
    public copy (nothing of the owner, the object id or the job)."""
    return {
        "id": obj.public_id, "kind": obj.kind, "content_type": obj.content_type,
        "size": obj.size, "width": obj.width, "height": obj.height,
        "created_at": obj.created_at, "expires_at": obj.expires_at,
        "url": backend.presigned_get(public_key(obj.public_id), settings.url_ttl_seconds,
                                     content_type=obj.content_type),
    }


def source_view(backend: Backend, settings: StorageSettings, obj: StoredObject) -> dict:
    """An object a service reads (a job's source image): its internal URL."""
    return {**view(obj), "url": backend.presigned_get(obj.key, settings.url_ttl_seconds,
                                                      internal=True, content_type=obj.content_type)}


def _visible(now: datetime) -> tuple:
    return (
        StoredObject.status == COMMITTED,
        StoredObject.deleted_at.is_(None),
        or_(StoredObject.expires_at.is_(None), StoredObject.expires_at > now),
    )


def get_visible(db: Session, owner_id, object_id, now: datetime,
                lock: bool = False) -> StoredObject:
    """The owner's committed, live object, or 404 (``lock``: FOR UPDATE)."""
    owner, oid = trusted_id(owner_id, "owner_id"), client_id(object_id, "object")
    stmt = select(StoredObject).where(StoredObject.id == oid, StoredObject.owner_id == owner,
                                      *_visible(now))
    obj = db.scalars(stmt.with_for_update() if lock else stmt).first()
    if obj is None:
        raise not_found("object")
    return obj


def get_public(db: Session, public_id, now: datetime) -> StoredObject:
    """A public object by its public id (404 for anything else, object ids included)."""
    if not isinstance(public_id, str) or not PUBLIC_ID.fullmatch(public_id):
        raise not_found("object")
    obj = db.scalars(
        select(StoredObject).where(StoredObject.public_id == public_id,
                                   StoredObject.visibility == "public", *_visible(now))
    ).first()
    if obj is None:
        raise not_found("object")
    return obj


# ---------------------------------------------------------------- user uploads


def create_upload_slot(db: Session, backend: Backend, settings: StorageSettings, owner_id,
                       now: datetime) -> dict:
    owner = trusted_id(owner_id, "owner_id")
    upload_id = new_id()
    slot = UploadSlot(id=upload_id, owner_id=owner, key=staging_key(upload_id), created_at=now,
                      expires_at=now + timedelta(seconds=settings.upload_slot_ttl_seconds))
    # the gateway streams the user's file to this slot: an address on the service network
    url, headers = backend.presigned_put(slot.key, settings.upload_slot_ttl_seconds,
                                         "application/octet-stream", settings.upload_max_bytes,
                                         internal=True)
    db.add(slot)
    return {"upload_id": slot.id, "url": url, "method": "PUT", "headers": headers,
            "max_bytes": settings.upload_max_bytes, "expires_at": slot.expires_at}


def _read_staged(backend: Backend, key: str, limit: int) -> bytes:
    """The staged bytes; 413 as soon as there are more than ``limit``."""
    try:
        stream = backend.open(key)
    except KeyError:
        raise upload_missing() from None
    with stream:
        return images.read_capped(stream, limit)


def finish_upload(db: Session, backend: Backend, settings: StorageSettings, owner_id, upload_id,
                  now: datetime, decodes: images.DecodeGate | None = None
                  ) -> tuple[StoredObject, str | None]:
    """Validate and re-encode what was PUT to the slot, store it as a new
    ``upload`` object. Returns the object and the staging key to delete once
    the caller has committed (None when the slot was finished before: the
    same object again). The bytes are read and decoded inside a turn of
    ``decodes`` (the process's bound; 503 ``storage_busy`` past its wait)."""
    owner, uid = trusted_id(owner_id, "owner_id"), client_id(upload_id, "upload")
    slot = locked(db, UploadSlot, uid)
    if slot is None or slot.owner_id != owner:
        raise not_found("upload")
    if slot.finished_at is not None:
        obj = db.get(StoredObject, slot.object_id) if slot.object_id else None
        if obj is None or obj.deleted_at is not None:
            raise not_found("upload")
        return obj, None
    if slot.expires_at <= now:
        raise not_found("upload")
    info = backend.stat(slot.key)
    if info is None:
        raise upload_missing()
    try:
        if info.size > settings.upload_max_bytes:
            raise payload_too_large(settings.upload_max_bytes)
        # nothing is read into memory before the turn comes
        with decodes.slot() if decodes is not None else nullcontext():
            data = _read_staged(backend, slot.key, settings.upload_max_bytes)
            image = offload(images.process_upload, data, settings.max_image_pixels)
            del data
    except DomainError as error:
        if error.code != "upload_missing":
            # A refused upload is not kept, not even staged; the slot stays
            # open for another attempt until it expires.
            backend.delete_many([slot.key])
        raise
    obj = StoredObject(
        id=new_id(), owner_id=owner, kind="upload", status=COMMITTED, content_type=image.content_type,
        size=len(image.data), sha256=image.sha256, width=image.width, height=image.height,
        visibility="private", created_at=now, committed_at=now,
    )
    obj.key = object_key(owner, obj.id)
    obj.expires_at = retention.expiry(db, settings, owner, obj.kind, now)
    backend.put(obj.key, io.BytesIO(image.data), len(image.data), image.content_type)
    db.add(obj)
    slot.finished_at, slot.object_id = now, obj.id
    return obj, slot.key


# ---------------------------------------------------------------- outputs


def create_output_slot(db: Session, backend: Backend, settings: StorageSettings, owner_id,
                       data: dict, now: datetime) -> dict:
    """A pending object with its declared size and sha256, and where to PUT it
    (413 ``payload_too_large`` past ``OUTPUT_MAX_BYTES``)."""
    if data["size"] > settings.output_max_bytes:
        raise payload_too_large(settings.output_max_bytes, "output")
    owner = trusted_id(owner_id, "owner_id")
    obj = StoredObject(
        id=new_id(), owner_id=owner, kind=data["kind"], status=PENDING,
        content_type=data["content_type"], size=data["size"], sha256=data["sha256"],
        width=data.get("width"), height=data.get("height"), job_id=data["job_id"],
        visibility="private", created_at=now,
    )
    obj.key = object_key(owner, obj.id)
    # the generation service uploads here: an address on the service network
    url, headers = backend.presigned_put(obj.key, settings.upload_slot_ttl_seconds, obj.content_type,
                                         obj.size, internal=True)
    db.add(obj)
    return {"object_id": obj.id, "upload_id": obj.id, "url": url, "method": "PUT",
            "headers": headers, "max_bytes": obj.size,
            "expires_at": now + timedelta(seconds=settings.upload_slot_ttl_seconds)}


def _digest(backend: Backend, key: str) -> tuple[int, str] | None:
    try:
        stream = backend.open(key)
    except KeyError:
        return None
    sha, size = hashlib.sha256(), 0
    with stream:
        while chunk := stream.read(READ_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def verify_bytes(backend: Backend, obj: StoredObject) -> None:
    """409 ``object_mismatch`` unless the stored bytes are what was declared."""
    info = backend.stat(obj.key)
    if info is None:
        raise object_mismatch(obj.id, "missing")
    if info.size != obj.size:
        raise object_mismatch(obj.id, "size")
    digest = _digest(backend, obj.key)
    if digest is None:
        raise object_mismatch(obj.id, "missing")
    if digest != (obj.size, obj.sha256):
        raise object_mismatch(obj.id, "size" if digest[0] != obj.size else "sha256")


def commit_objects(db: Session, backend: Backend, settings: StorageSettings, owner_id,
                   object_ids, now: datetime) -> list[StoredObject]:
    """Commit the owner's pending objects once their bytes check out, all or
    none; objects committed before are returned as they are (idempotent)."""
    owner = trusted_id(owner_id, "owner_id")
    if (not isinstance(object_ids, list | tuple) or not object_ids or len(object_ids) > MAX_COMMIT
            or not all(isinstance(i, str | uuid.UUID) for i in object_ids)):
        raise invalid_request(f"object_ids must be a list of 1 to {MAX_COMMIT} ids",
                              fields={"object_ids": ["Not a valid list of ids."]})
    ids = list(dict.fromkeys(client_id(i, "object") for i in object_ids))
    rows = []
    for oid in ids:
        obj = locked(db, StoredObject, oid)
        if obj is None or obj.owner_id != owner or obj.deleted_at is not None:
            raise not_found("object")
        rows.append(obj)
    pending = [obj for obj in rows if obj.status == PENDING]
    for obj in pending:
        verify_bytes(backend, obj)
    for obj in pending:
        obj.status, obj.committed_at = COMMITTED, now
        obj.expires_at = retention.expiry(db, settings, owner, obj.kind, obj.created_at)
    return rows


# ---------------------------------------------------------------- gallery


def signed_urls(db: Session, backend: Backend, settings: StorageSettings, owner_id,
                object_ids: list[uuid.UUID], now: datetime) -> list[dict]:
    """Download URLs of those of ``object_ids`` that are the owner's,
    committed and live, in the order asked (another owner's, a deleted or an
    expired object is left out, like an unknown one), with one query."""
    owner = trusted_id(owner_id, "owner_id")
    ids = list(dict.fromkeys(object_ids))
    if not ids:
        return []
    found = {obj.id: obj for obj in db.scalars(select(StoredObject).where(
        StoredObject.id.in_(ids), StoredObject.owner_id == owner, *_visible(now)))}
    expires = now + timedelta(seconds=settings.url_ttl_seconds)
    return [{"id": oid, "url_expires_at": expires,
             "url": backend.presigned_get(found[oid].key, settings.url_ttl_seconds,
                                          content_type=found[oid].content_type)}
            for oid in ids if oid in found]


def list_objects(db: Session, owner_id, query: dict, now: datetime) -> tuple[list[StoredObject], str | None]:
    owner = trusted_id(owner_id, "owner_id")
    stmt: Select = select(StoredObject).where(StoredObject.owner_id == owner, *_visible(now))
    if query.get("kind"):
        stmt = stmt.where(StoredObject.kind == query["kind"])
    else:
        stmt = stmt.where(StoredObject.kind.in_(GALLERY_KINDS))
    if query.get("job_id"):
        stmt = stmt.where(StoredObject.job_id == query["job_id"])
    return paginate(db, stmt, StoredObject.created_at, StoredObject.id, query["limit"], query["cursor"])


def set_visibility(db: Session, backend: Backend, owner_id, object_id, visibility: str,
                   now: datetime) -> StoredObject:
    """Public: a new public id and a copy of the bytes under it (copied before
    the row says public; a crash in between leaves bytes the orphan sweep
    removes). Private: the copy deleted first, then the public id forgotten,
    so the old public URLs stop at once. Setting what is already set changes
    nothing (the public id stays)."""
    obj = get_visible(db, owner_id, object_id, now, lock=True)
    if visibility == "public" and obj.public_id is None:
        public_id = new_public_id()
        try:
            backend.copy(obj.key, public_key(public_id))
        except KeyError:
            raise storage_unavailable("find the object's bytes") from None
        except Exception as exc:
            raise storage_unavailable(f"publish the object ({type(exc).__name__})") from None
        obj.public_id = public_id
    elif visibility == "private" and obj.public_id is not None:
        if backend.delete_many([public_key(obj.public_id)]):
            raise storage_unavailable("unpublish the object")
        obj.public_id = None
    obj.visibility = visibility
    return obj


def delete_object(db: Session, backend: Backend, owner_id, object_id, now: datetime) -> StoredObject:
    """Delete the bytes now (the public copy too), then tombstone the row."""
    obj = get_visible(db, owner_id, object_id, now, lock=True)
    if backend.delete_many(stored_keys(obj)):
        raise storage_unavailable("delete the object")
    obj.deleted_at, obj.public_id = now, None
    return obj


# ---------------------------------------------------------------- privacy


def export_user(db: Session, user_id) -> list[StoredObject]:
    """Every object the user has stored with us (committed and not deleted,
    expired or not), oldest first."""
    owner = trusted_id(user_id)
    return list(db.scalars(
        select(StoredObject)
        .where(StoredObject.owner_id == owner, StoredObject.status == COMMITTED,
               StoredObject.deleted_at.is_(None))
        .order_by(StoredObject.created_at, StoredObject.id)
    ))


def _delete_keys(backend: Backend, keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    failed: list[str] = []
    for start in range(0, len(keys), 1000):
        failed += backend.delete_many(keys[start:start + 1000])
    return failed


def erase_user(db: Session, backend: Backend, user_id) -> dict:
    """Delete every byte and every row the user has here: objects (live,
    pending, tombstones), upload slots and their staged bytes, the plan
    retention: ``{objects, bytes, tables}`` (rows deleted per table). If the
    store fails to delete anything, nothing is forgotten (503; calling again
    finishes the job)."""
    owner = trusted_id(user_id)
    live = db.execute(
        select(StoredObject.key, StoredObject.size, StoredObject.public_id)
        .where(StoredObject.owner_id == owner, StoredObject.deleted_at.is_(None))
        .with_for_update()
    ).all()
    staged = db.scalars(select(UploadSlot.key).where(UploadSlot.owner_id == owner)).all()
    if _delete_keys(backend, [k for r in live for k in stored_keys(r)] + list(staged)):
        raise storage_unavailable("erase every object")
    tables = {}
    for model in (StoredObject, UploadSlot, OwnerRetention):
        tables[model.__tablename__] = db.execute(
            delete(model).where(model.owner_id == owner)
            .execution_options(synchronize_session=False)).rowcount or 0
    return {"objects": len(live), "bytes": sum(r.size for r in live), "tables": tables}


def store_export(db: Session, backend: Backend, settings: StorageSettings, owner_id,
                 job_id, data: bytes, now: datetime) -> StoredObject:
    """A committed ``export`` object holding ``data`` (a zip), for a part of
    a privacy export that is too big to travel in its event."""
    owner = trusted_id(owner_id, "owner_id")
    obj = StoredObject(
        id=new_id(), owner_id=owner, kind="export", status=COMMITTED,
        content_type="application/zip", size=len(data), sha256=hashlib.sha256(data).hexdigest(),
        job_id=job_id, visibility="private", created_at=now, committed_at=now,
    )
    obj.key = object_key(owner, obj.id)
    obj.expires_at = retention.expiry(db, settings, owner, obj.kind, now)
    backend.put(obj.key, io.BytesIO(data), len(data), obj.content_type)
    db.add(obj)
    return obj


def owners_between(db: Session, window_from: datetime, window_to: datetime) -> dict[str, int]:
    """Owners of the objects stored at some time within ``[window_from,
    window_to)`` (created before its end, not deleted before its start):
    ``{owner_id: objects}`` (a breach's affected users; services/privacy/breaches.py)."""
    rows = db.execute(
        select(StoredObject.owner_id, func.count())
        .where(StoredObject.created_at < window_to,
               or_(StoredObject.deleted_at.is_(None), StoredObject.deleted_at >= window_from))
        .group_by(StoredObject.owner_id)).all()
    return {str(owner): count for owner, count in rows}
