"""What the notifications service does with an event: render, send, record.

Delivery is idempotent on ``event_id``: the event is claimed (a
``processed_events`` row) in the transaction that records the mail, before the
mail is sent and committed after it. A second delivery of the same event finds
the claim, or, running at the same moment on PostgreSQL, waits on the claim's
unique key and then gives up: one mail. A mailer failure raises, the worker
rolls the claim back and the event is retried, then dead-lettered. A crash
between the send and the commit sends the mail again on redelivery: a
duplicate mail is better than a lost verification code.

Billing's events (receipts, refunds) carry a user id but no address: the
caller passes ``find_recipient``, asked only once the event is claimed, so a
redelivered event costs no lookup. It raises when the address cannot be
known now (auth away: the event is retried), or returns None when there is
nobody to write to any more (an erased account): the claim is kept, no mail.

Nothing at all is written for an erased account (:func:`account_erased`: a
late event of it, whatever carries the address): no mail, no record.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.common.config import app_base_url
from services.common.db import claim_event
from services.common.errors import NonRetryable
from services.common.ids import isoformat, trusted_id, utcnow
from services.common.races import first_wins
from services.common.sealed import Sealer, UnreadableSecret
from services.notifications.mailer import Mailer
from services.notifications.models import ErasedAccount, Notification, processed_events
from services.notifications.render import build_message, cancel_erasure_url, render, reset_url

log = logging.getLogger(__name__)

TEMPLATES = ("email_verification", "password_reset", "password_changed", "signup_attempted",
             "suspicious_login", "receipt", "refund", "export_ready", "news",
             "erasure_scheduled", "breach_notice")


def resolved_mail_settings(config: dict) -> dict:
    """A notifications config's ``MAIL`` section with ``APP_BASE_URL``, the base
    of the links in mail, resolved (``PUBLIC_BASE_URL`` when it is unset);
    ValueError when it is not an absolute http(s) URL."""
    section = dict(config.get("MAIL") or {})
    return {**section, "APP_BASE_URL": app_base_url(section)}


def template_context(template: str, event: dict, mail_settings: dict,
                     sealer: Sealer | None = None) -> dict:
    """What ``template`` is rendered with: the event, the app's base URL, and
    the secret the event carries sealed, opened (``code``, ``reset_url``,
    ``cancel_url``). A secret that cannot be opened (``MAIL_SECRETS_KEY``
    differs from the sealing service's: auth's or privacy's) is NonRetryable:
    the event is dead-lettered at once, still sealed."""
    base_url = app_base_url(mail_settings)
    context = {**event, "app_base_url": base_url}
    try:
        if "sealed_code" in event:
            context["code"] = sealer.open(event["sealed_code"])
        if "sealed_token" in event:
            context["reset_url"] = reset_url(base_url, sealer.open(event["sealed_token"]))
        if "sealed_cancel_token" in event:
            context["cancel_url"] = cancel_erasure_url(
                base_url, event["request_id"], sealer.open(event["sealed_cancel_token"]))
    except UnreadableSecret as exc:
        raise NonRetryable(str(exc)) from None
    return context


def erased_subject(user_id) -> str:
    return hashlib.sha256(f"darkroom-erased-account:{trusted_id(user_id)}".encode()).hexdigest()


def account_erased(session: Session, user_id) -> bool:
    """True once the account's erasure reached this service."""
    return session.get(ErasedAccount, erased_subject(user_id)) is not None


def forget_account(session: Session, user_id) -> None:
    """Remember that the account is erased (a digest of its id); the caller commits."""
    if not account_erased(session, user_id):
        session.add(ErasedAccount(subject=erased_subject(user_id), erased_at=utcnow()))


def claim(session: Session, event_id, consumer: str) -> bool:
    """Claim the event in the current transaction; False if it was handled
    (or is being handled right now) by another delivery."""
    return first_wins(session, lambda: claim_event(session, processed_events, event_id, consumer),
                      lambda: False)  # a concurrent delivery committed the same claim


def deliver(session: Session, mailer: Mailer, mail_settings: dict, template: str,
            event: dict, find_recipient: Callable[[dict], str | None] | None = None,
            sealer: Sealer | None = None) -> Notification | None:
    """Send the mail ``template`` for ``event`` (loaded through its contract)
    once, to ``event["email"]`` or to whom ``find_recipient(event)`` names;
    return its record, or None when it had been sent already (or has nobody
    to go to)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}")
    consumer = f"notifications.{template}"
    event_id = event["event_id"]
    if account_erased(session, event["user_id"]):
        log.warning("no %s mail for event %s: the account was erased", template, event_id)
        return None
    if not claim(session, event_id, consumer):
        log.info("%s mail for event %s was sent already", template, event_id)
        return None
    if find_recipient is not None:
        recipient = find_recipient(event)
        if recipient is None:
            session.commit()  # the claim: a redelivery asks nobody again
            log.warning("no %s mail for event %s: user %s has no account any more",
                        template, event_id, event["user_id"])
            return None
        event = {**event, "email": recipient}
    rendered = render(template, template_context(template, event, mail_settings, sealer))
    notification_id = uuid.uuid4()
    message = build_message(
        rendered,
        sender=mail_settings.get("FROM") or "Darkroom <no-reply@darkroom.local>",
        recipient=event["email"],
        message_key=str(notification_id),
        headers={"X-Darkroom-Event-Id": str(event_id), "X-Darkroom-Template": template},
    )
    mailer.send(message)
    notification = Notification(
        id=notification_id, event_id=trusted_id(event_id, "event_id"), user_id=trusted_id(event["user_id"]),
        recipient=event["email"], template=template, subject=rendered.subject, sent_at=utcnow(),
    )
    session.add(notification)
    session.commit()
    log.info("%s mail sent for user %s (notification %s)", template, event["user_id"], notification_id)
    return notification


def export_user(session: Session, user_id) -> list[dict]:
    """Every mail sent to a user, for a data export."""
    rows = session.scalars(
        select(Notification).where(Notification.user_id == trusted_id(user_id))
        .order_by(Notification.sent_at)
    )
    return [
        {"id": str(n.id), "template": n.template, "recipient": n.recipient, "subject": n.subject,
         "sent_at": isoformat(n.sent_at)}
        for n in rows
    ]


def erase_user(session: Session, user_id) -> int:
    """Forget the mails sent to a user (the processed-event ids, which hold no
    personal data, stay so a redelivered old event still sends nothing).
    The caller commits."""
    result = session.execute(
        delete(Notification).where(Notification.user_id == trusted_id(user_id))
    )
    return result.rowcount or 0
