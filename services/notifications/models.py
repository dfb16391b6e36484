"""The notifications service's tables.

``notifications`` records every mail sent (who, which template, when) so the
privacy service can export and erase it; its unique ``event_id`` and the
``processed_events`` table make the event handlers idempotent.
``erased_accounts`` keeps a digest of each erased account's id so nothing is
written for it again. ``marketing_preferences`` mirrors the privacy service's marketing consent and
restriction (from its events): marketing mail goes only to an account that
opted in and is not restricted. ``outbox`` holds this service's answers to
privacy requests on their way to the broker.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import UtcDateTime, processed_events_table
from services.common.fieldcrypt import Encrypted
from services.common.ids import utcnow
from services.common.models import IdMixin, service_base
from services.common.outbox import outbox_table

SUBJECT_MAX = 300


Base = service_base()


processed_events = processed_events_table(Base.metadata)


class Notification(IdMixin, Base):
    __tablename__ = "notifications"

    event_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    # the address mailed, encrypted (services/common/fieldcrypt.py)
    recipient: Mapped[str] = mapped_column(Encrypted("notifications.recipient"))
    template: Mapped[str] = mapped_column(sa.String(64))
    subject: Mapped[str] = mapped_column(sa.String(SUBJECT_MAX))
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class MarketingPreference(Base):
    """The account's marketing consent and restriction, as of the newest
    privacy event of each kind (an older one arriving late changes nothing)."""

    __tablename__ = "marketing_preferences"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    marketing_email: Mapped[bool] = mapped_column(
        sa.Boolean, default=False, server_default=sa.false()
    )
    restricted: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    consent_changed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    restriction_changed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ErasedAccount(Base):
    """An erased account, as a SHA-256 digest of its (random) id: no row is
    written for it any more (a late receipt, consent or sign-in event of the
    account finds it here). The digest holds nothing about the person."""

    __tablename__ = "erased_accounts"

    subject: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


outbox = outbox_table(Base.metadata)
