"""What every service's answer to a privacy request looks like: shared by
the services that hold personal data (each one's own ``privacy`` module
decides *what* it exports or erases; this decides how the answer travels).

- :func:`export_part`: the ``<service>.export_part_ready`` payload. The JSON
  rides in the event up to :data:`PART_INLINE_MAX_BYTES`; a bigger part is
  zipped (``part.json``) and stored through the storage service as one of the
  user's ``export`` objects, and the event carries its id (storage deletes
  it after the archive is built, or after its export retention at most).
- :func:`erasure_result`: the ``<service>.erasure_completed`` payload:
  counts per table and times, never personal data.
- :func:`store_through_storage`: the storing of a big part, for services
  that reach storage by RPC.
- :func:`record_newest`: a service's copy of a per-user privacy state
  (restricted, erasure pending) from the privacy service's events.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import zipfile
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal

import requests
from sqlalchemy.orm import Session

from services.common.contracts.privacy import PART_INLINE_MAX_BYTES
from services.common.ids import isoformat

PART_FILE = "part.json"
UPLOAD_TIMEOUT_SECONDS = 120

Store = Callable[[bytes], uuid.UUID | str]


def _default(value):
    if isinstance(value, datetime):
        return isoformat(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raise TypeError("bytes do not belong in an export part")
    raise TypeError(f"cannot export a {type(value).__name__}")


def to_json(data) -> bytes:
    return json.dumps(data, default=_default, ensure_ascii=False, separators=(",", ":")).encode()


def zipped(blob: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(PART_FILE, blob)
    return buffer.getvalue()


def export_part(request_id, service: str, data: dict, about: str, withheld=(),
                store: Store | None = None, inline_max: int = PART_INLINE_MAX_BYTES) -> dict:
    """The payload of ``<service>.export_part_ready`` for ``data`` (any JSON
    with datetimes and UUIDs in it). Past ``inline_max`` bytes the part is
    stored with ``store(zip bytes) -> object id``; without a ``store`` it
    travels inline all the same (RabbitMQ takes it; the outbox row is big)."""
    blob = to_json(data)
    payload = {"request_id": str(request_id), "service": service, "about": about,
               "withheld": [dict(w) for w in withheld]}
    if len(blob) > inline_max and store is not None:
        return {**payload, "data": None, "object_id": str(store(zipped(blob)))}
    return {**payload, "data": json.loads(blob), "object_id": None}


def erasure_result(request_id, service: str, started_at: datetime, finished_at: datetime,
                   tables: dict[str, int], rows_pseudonymised: int = 0, objects_deleted: int = 0,
                   bytes_deleted: int = 0, recheck: bool = False) -> dict:
    """The payload of ``<service>.erasure_completed``: rows deleted per table
    (their sum is ``rows_deleted``), rows kept but pseudonymised, objects and
    bytes removed from the object store; ``recheck`` when it answers the
    request's second asking (``privacy.erasure_requested`` with ``recheck``)."""
    tables = {str(name): int(count) for name, count in tables.items()}
    result = {"request_id": str(request_id), "service": service,
              "rows_deleted": sum(tables.values()), "rows_pseudonymised": int(rows_pseudonymised),
              "objects_deleted": int(objects_deleted), "bytes_deleted": int(bytes_deleted),
              "tables": tables, "started_at": isoformat(started_at),
              "finished_at": isoformat(finished_at)}
    if recheck:
        result["recheck"] = True
    return result


def store_through_storage(storage, user_id, request_id, http=requests,
                          timeout: float = UPLOAD_TIMEOUT_SECONDS) -> Store:
    """``store`` for :func:`export_part` in a service with a storage RPC
    proxy: an ``export`` output slot, a PUT, a commit that checks size and hash."""

    def store(blob: bytes) -> str:
        slot = storage.create_output_slot(str(user_id), {
            "job_id": str(request_id), "content_type": "application/zip", "size": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(), "kind": "export"})
        response = http.request(slot["method"], slot["url"], data=blob,
                                headers=slot.get("headers") or {}, timeout=timeout)
        response.raise_for_status()
        storage.commit_objects(str(user_id), [str(slot["object_id"])])
        return str(slot["object_id"])

    return store


def record_newest(db: Session, model, user_id, field: str, value: bool, at: datetime) -> bool:
    """Set ``field`` of the user's ``model`` row (primary key ``user_id``,
    and ``changed_at``) from an event of time ``at``, unless a newer event
    was recorded (events may arrive out of order); False then. The caller
    commits."""
    uid = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
    row = db.get(model, uid, with_for_update=True)
    if row is None:
        db.add(model(user_id=uid, changed_at=at, **{field: bool(value)}))
    elif row.changed_at > at:
        return False
    else:
        setattr(row, field, bool(value))
        row.changed_at = at
    db.flush()
    return True
