"""The storage service's part of privacy requests (the protocol of
:mod:`services.common.privacy_parts`): the list of the user's objects (the
privacy service downloads the files themselves into the archive), their
erasure (rows and bytes, in :mod:`objects`), and the retention schedule this
service enforces. ``export`` and ``erase`` get the service's object store
(its settings and backend)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from services.common.privacy_parts import Erasure
from services.storage import objects
from services.storage.settings import StorageSettings

ABOUT = (
    "The files you uploaded and the files generated for you, as records: kind, type, size, "
    "dimensions, SHA-256, visibility, the generation job, when each was stored and when it "
    "expires. The files themselves are in media/; earlier export archives are listed here too."
)
WITHHELD = [
    {"what": "files that have expired and await deletion",
     "why": "they are listed, but past their retention and no longer served"},
    {"what": "earlier export archives (kind export)",
     "why": "they are listed, not included again"},
]


def export(db: Session, store, user_id) -> dict:
    return {"objects": [objects.view(obj) for obj in objects.export_user(db, user_id)]}


def erase(db: Session, store, user_id, now: datetime, recheck: bool = False) -> Erasure:
    """Every object of the user's, bytes and rows; a store that fails a
    delete raises (503): nothing is forgotten, and the retried event
    finishes the job. The caller commits."""
    erased = objects.erase_user(db, store.backend, user_id)
    return Erasure(erased["tables"], objects_deleted=erased["objects"],
                   bytes_deleted=erased["bytes"])


def retention_items(settings: StorageSettings) -> list[dict]:
    purge = "the storage service's purge, every minute"
    return [
        {"data": "uploads and generated outputs (accounts without a plan retention)",
         "kept": f"{settings.retention_days} days", "days": float(settings.retention_days),
         "enforced_by": purge},
        {"data": "export archives", "kept": f"{settings.export_retention_days} days",
         "days": float(settings.export_retention_days), "enforced_by": purge},
        {"data": "a deleted or expired file's record (no bytes)",
         "kept": "until the account is erased", "days": None,
         "enforced_by": "erasure (privacy request)"},
        {"data": "unfinished uploads", "kept": f"{settings.orphan_grace_seconds} seconds",
         "days": round(settings.orphan_grace_seconds / 86400, 6),
         "enforced_by": "the storage service's orphan sweep, every hour"},
    ]
