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

Taking part is one protocol. A participating service (one of
:data:`~services.common.contracts.privacy.PART_SERVICES`) mixes
:class:`PrivacyParticipant` into its class and points ``privacy`` at its own
``privacy`` module, which exposes:

- ``ABOUT``: what its export part holds; ``WITHHELD``: what it keeps out of
  the export, and why (``[{"what", "why"}]``);
- ``export(db, deps, user_id) -> dict``: the part's JSON;
- ``erase(db, deps, user_id, now, recheck) -> Erasure``: deletes (or
  pseudonymises) what it holds; the caller commits;
- ``retention_items(settings) -> list[dict]``: what it keeps and for how long,
  for ``GET /v1/privacy/retention``.

``deps`` is what the service's :meth:`~PrivacyParticipant.privacy_deps`
returns (its settings; storage: its object store). The mixin supplies the
``privacy.export_requested`` and ``privacy.erasure_requested`` handlers and
the ``retention_schedule`` RPC; :class:`ErasurePendingMirror` supplies
``privacy.erasure_scheduled`` / ``erasure_cancelled`` for the services that
refuse to spend while an erasure is pending (the module exposes
``apply_erasure_pending``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from types import ModuleType

import requests
from sqlalchemy.orm import Session

from services.common.contracts.privacy import PART_INLINE_MAX_BYTES
from services.common.db import locked
from services.common.errors import DomainError
from services.common.ids import isoformat, trusted_id, utcnow
from services.common.messaging import event_handler
from services.common.queues import rpc

log = logging.getLogger(__name__)

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
    uid = trusted_id(user_id)
    row = locked(db, model, uid)
    if row is None:
        db.add(model(user_id=uid, changed_at=at, **{field: bool(value)}))
    elif row.changed_at > at:
        return False
    else:
        setattr(row, field, bool(value))
        row.changed_at = at
    db.flush()
    return True


def recorded(db: Session, model, user_id, field: str) -> bool:
    """The user's copy of a per-user privacy state (see :func:`record_newest`):
    False without a row."""
    row = db.get(model, trusted_id(user_id))
    return bool(row is not None and getattr(row, field))


# ---------------------------------------------------------------- the protocol


@dataclass
class Erasure:
    """What a service's ``privacy.erase`` did: rows deleted per table, rows
    kept but pseudonymised, objects and bytes removed from the object store,
    and the other strings that name the user in its dead letters (auth: the
    address, read before the account is gone)."""

    tables: dict[str, int]
    rows_pseudonymised: int = 0
    objects_deleted: int = 0
    bytes_deleted: int = 0
    also_named: tuple[str, ...] = field(default=())


class PrivacyParticipant:
    """The export and erasure handlers of a service that takes part in
    privacy requests, and its ``retention_schedule`` RPC (see the module
    docstring). The service class sets ``privacy`` to its privacy module and
    has ``db``, ``dispatch`` and ``dead_letters``."""

    privacy: ModuleType

    def privacy_deps(self):
        """What the privacy module's ``export`` and ``erase`` get besides the
        session: the service's settings (None for a service without)."""
        return getattr(self, "settings", None)

    def privacy_store(self, event: dict) -> Store | None:
        """How a big export part is stored (see :func:`export_part`): not at
        all by default (it travels inline)."""
        return None

    @rpc(expected_exceptions=DomainError)
    def retention_schedule(self) -> dict:
        return {"items": self.privacy.retention_items(getattr(self, "settings", None))}

    @event_handler("privacy", "export_requested")
    def privacy_export_requested(self, event: dict) -> None:
        if self.name not in event["services"]:
            return
        data = self.privacy.export(self.db, self.privacy_deps(), event["user_id"])
        self.dispatch("export_part_ready", export_part(
            event["request_id"], self.name, data, self.privacy.ABOUT, self.privacy.WITHHELD,
            self.privacy_store(event)))
        self.db.commit()

    @event_handler("privacy", "erasure_requested")
    def privacy_erasure_requested(self, event: dict) -> None:
        """Idempotent: a second erasure finds nothing and counts zeros, which
        privacy ignores. An error (generation: a job of the user runs; storage:
        the store failed a delete) retries the event."""
        if self.name not in event["services"]:
            return
        started = utcnow()
        erased = self.privacy.erase(self.db, self.privacy_deps(), event["user_id"], started,
                                    event["recheck"])
        tables = {**erased.tables,
                  "dead_letters": self.dead_letters(event["user_id"], *erased.also_named)}
        self.dispatch("erasure_completed", erasure_result(
            event["request_id"], self.name, started, utcnow(), tables,
            rows_pseudonymised=erased.rows_pseudonymised, objects_deleted=erased.objects_deleted,
            bytes_deleted=erased.bytes_deleted, recheck=event["recheck"]))
        self.db.commit()
        log.info("%s's part of an erasure done", self.name, extra={
            "request_id": str(event["request_id"]), "rows_deleted": sum(tables.values()),
            "rows_pseudonymised": erased.rows_pseudonymised,
            "objects_deleted": erased.objects_deleted})


class ErasurePendingMirror:
    """For a service that refuses to spend while an erasure of the account
    waits out its grace period: ``privacy.apply_erasure_pending`` records the
    privacy service's ``erasure_scheduled`` and ``erasure_cancelled``."""

    privacy: ModuleType

    @event_handler("privacy", "erasure_scheduled")
    def privacy_erasure_scheduled(self, event: dict) -> None:
        self.privacy.apply_erasure_pending(self.db, event["user_id"], True, event["occurred_at"])
        self.db.commit()

    @event_handler("privacy", "erasure_cancelled")
    def privacy_erasure_cancelled(self, event: dict) -> None:
        self.privacy.apply_erasure_pending(self.db, event["user_id"], False, event["occurred_at"])
        self.db.commit()
