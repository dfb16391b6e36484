"""An account's rectification history: each address change and profile
change, kept for its owner's export until the account is erased."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.auth.models import AccountChange, User
from services.common.ids import isoformat, new_id

EMAIL_CHANGED = "email_changed"
PROFILE_UPDATED = "profile_updated"


def record(db: Session, user: User, kind: str, changes: dict, now: datetime) -> None:
    """``changes``: ``{field: {"from": old, "to": new}}`` (JSON-ready values)."""
    db.add(AccountChange(id=new_id(), user_id=user.id, kind=kind, changes=changes,
                         created_at=now))


def plain(value):
    return str(value) if isinstance(value, uuid.UUID) else value


def export(db: Session, user_id: uuid.UUID) -> list[dict]:
    rows = db.scalars(select(AccountChange).where(AccountChange.user_id == user_id)
                      .order_by(AccountChange.created_at, AccountChange.id))
    return [{"kind": r.kind, "changes": r.changes, "at": isoformat(r.created_at)} for r in rows]
