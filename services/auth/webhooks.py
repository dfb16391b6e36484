"""The account's webhook signing secret.

Webhooks (docs/api.md "Generation") follow Standard Webhooks: ``webhook-signature:
v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed with the bytes this
``whsec_<base64>`` secret encodes; receivers verify with the same value (any
Standard Webhooks library takes it as it is), so it is stored as it is and
shown to its owner on request
(``GET /v1/me/webhook-secret``). It is made on first use, so accounts that
never use webhooks never get one. Rotating replaces it at once: a delivery
signed after the rotation carries the new secret's signature.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

from sqlalchemy.orm import Session

from services.auth.models import User, WebhookSecret

PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    """``whsec_`` and 32 random bytes in standard base64 (44 characters), the
    form Standard Webhooks libraries decode."""
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def get_or_create(db: Session, user: User, now: datetime) -> WebhookSecret:
    """The user's secret, made now if it has none. Two first calls at once
    both insert: the loser's flush (or commit) raises IntegrityError, and the
    caller reads again."""
    row = db.get(WebhookSecret, user.id)
    if row is None:
        row = WebhookSecret(user_id=user.id, secret=new_secret(), created_at=now)
        db.add(row)
        db.flush()
    return row


def rotate(db: Session, user: User, now: datetime) -> WebhookSecret:
    """A new secret replaces the old one (or the first one is made)."""
    row = db.get(WebhookSecret, user.id)
    if row is None:
        return get_or_create(db, user, now)
    row.secret = new_secret()
    row.created_at = now
    db.flush()
    return row


def view(row: WebhookSecret) -> dict:
    return {"secret": row.secret, "created_at": row.created_at}
