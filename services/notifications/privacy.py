"""The notifications service's part of privacy requests (the protocol of
:mod:`services.common.privacy_parts`): the mails it recorded, in an export
and in an erasure, and the retention schedule it enforces; besides, the
marketing preferences it mirrors from the privacy service's events
(marketing mail only to accounts that opted in and are not restricted;
security mail always goes out). The service has no settings: the protocol's
``settings`` argument is None here."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.common.db import locked
from services.common.ids import isoformat, trusted_id
from services.common.privacy_parts import Erasure
from services.notifications import notify
from services.notifications.models import MarketingPreference, Notification

ABOUT = (
    "The mails we sent you: when, to which address, which kind (verification, password "
    "reset, sign-in warning, receipt, refund, export ready, erasure scheduled, news) and the "
    "subject; and "
    "whether you get news by mail."
)
WITHHELD = [
    {"what": "the bodies of the mails",
     "why": "they are not stored: they went to your mailbox (which has them)"},
]
MARKETING_NAMESPACE = uuid.UUID("6f2c0a4e-7e0f-4d0a-9a51-2c1f3f8b9d10")


def export(db: Session, settings: None, user_id) -> dict:
    preference = db.get(MarketingPreference, trusted_id(user_id))
    return {
        "mails": notify.export_user(db, user_id),
        "marketing": {
            "marketing_email": bool(preference and preference.marketing_email),
            "restricted": bool(preference and preference.restricted),
            "changed_at": isoformat(preference.consent_changed_at) if preference else None,
        },
    }


def erase(db: Session, settings: None, user_id, now: datetime,
          recheck: bool = False) -> Erasure:
    """Rows deleted per table, and the account remembered as erased (a
    digest) so that nothing is written for it again; the caller commits."""
    uid = trusted_id(user_id)
    notify.forget_account(db, uid)
    db.flush()
    return Erasure({
        "notifications": db.execute(delete(Notification).where(Notification.user_id == uid)
                                    .execution_options(synchronize_session=False)).rowcount or 0,
        "marketing_preferences": db.execute(
            delete(MarketingPreference).where(MarketingPreference.user_id == uid)
            .execution_options(synchronize_session=False)).rowcount or 0,
    })


def _preference(db: Session, user_id: uuid.UUID) -> MarketingPreference:
    row = locked(db, MarketingPreference, user_id)
    if row is None:
        row = MarketingPreference(user_id=user_id, marketing_email=False, restricted=False)
        db.add(row)
    return row


def _apply_newer(db: Session, user_id, field: str, value: bool, changed_at: str,
                 at: datetime) -> bool:
    """Set the preference's ``field`` from an event of time ``at`` unless a
    newer one was applied (its time is in ``changed_at``) or the account is
    erased; the caller commits."""
    if notify.account_erased(db, user_id):
        return False
    row = _preference(db, trusted_id(user_id))
    if getattr(row, changed_at) is not None and getattr(row, changed_at) > at:
        return False
    setattr(row, field, bool(value))
    setattr(row, changed_at, at)
    db.flush()
    return True


def consent_changed(db: Session, user_id, marketing_email: bool, at: datetime) -> bool:
    """Apply a consent event unless a newer one was applied (or the account
    is erased); the caller commits."""
    return _apply_newer(db, user_id, "marketing_email", marketing_email, "consent_changed_at", at)


def restriction_changed(db: Session, user_id, restricted: bool, at: datetime) -> bool:
    return _apply_newer(db, user_id, "restricted", restricted, "restriction_changed_at", at)


def marketing_allowed(db: Session, user_ids) -> set[uuid.UUID]:
    """Of ``user_ids``, those that opted in to marketing mail and are not
    restricted (no record: never opted in)."""
    ids = [trusted_id(u) for u in user_ids]
    return set(db.scalars(select(MarketingPreference.user_id).where(
        MarketingPreference.user_id.in_(ids), MarketingPreference.marketing_email.is_(True),
        MarketingPreference.restricted.is_(False))))


def marketing_event(campaign_id, user_id, subject: str, text: str) -> dict:
    """The mail of one campaign to one user, as :func:`notify.deliver` takes
    it: its id is derived from both, so a campaign sent twice mails nobody twice."""
    return {"event_id": uuid.uuid5(MARKETING_NAMESPACE, f"{campaign_id}:{user_id}"),
            "user_id": trusted_id(user_id), "subject": subject, "text": text}


def retention_items(settings: None) -> list[dict]:
    return [
        {"data": "record of each mail sent (address, kind, subject, time; no body)",
         "kept": "until the account is erased", "days": None,
         "enforced_by": "erasure (privacy request)"},
        {"data": "marketing preference (mirrored from the privacy service)",
         "kept": "until the account is erased", "days": None,
         "enforced_by": "erasure (privacy request)"},
        {"data": "erased accounts (a SHA-256 digest of the id: nothing is written for them "
                 "again)", "kept": "indefinitely; it holds nothing about the person",
         "days": None, "enforced_by": "written by the erasure"},
    ]
