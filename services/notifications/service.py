"""The notifications service: mail for the facts other services publish.

    nameko run --config deploy/config/notifications.yaml \
        services.notifications.service:NotificationsService

Auth's events carry the address; billing's (receipts, refunds) only the user
id, so the address is asked of auth (``auth.get_user``) when the mail is
sent: it goes to the account's current address. Auth unreachable → the
handler raises and the reliable event handler retries, then dead-letters.

Privacy: this service answers export and erasure requests (the mails it
recorded), mails the "export ready" notice, and mirrors marketing consent
and restriction so that marketing mail (``send_marketing``) reaches only
accounts that opted in and are not restricted; security mail always goes out.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nameko.dependency_providers import Config

from services.common.contracts import load_rpc
from services.common.contracts import privacy as privacy_contracts
from services.common.db import Database
from services.common.errors import DomainError
from services.common.messaging import EventPublisher, event_handler
from services.common.privacy_parts import PrivacyParticipant
from services.common.queues import RpcProxy, rpc
from services.common.sealed import Sealer
from services.common.service import DarkroomService, FromConfig
from services.notifications import notify
from services.notifications import privacy as privacy_data
from services.notifications.mailer import MailerProvider
from services.notifications.models import Base, outbox

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def mail(event: str, template: str):
    """The handler of ``event`` (``<service>.<type>``) that mails ``template``:
    to the address auth's events carry, or else to the account's current
    address, asked of auth."""
    source, event_type = event.split(".")

    def handler(self, body: dict) -> None:
        self._deliver(template, body,
                      find_recipient=None if source == "auth" else self._address_of)

    handler.__doc__ = f"``{event}``: mail {template}.eml.j2."
    return event_handler(source, event_type)(handler)


class NotificationsService(PrivacyParticipant, DarkroomService):
    name = "notifications"
    privacy = privacy_data  # its part of privacy requests
    config = Config()
    db = Database(migrations=MIGRATIONS, metadata=Base.metadata)
    dispatch = EventPublisher(outbox=outbox)
    mailer = MailerProvider()
    # Opens the codes and tokens auth's and privacy's events carry sealed (MAIL_SECRETS_KEY).
    sealer = FromConfig(Sealer.from_config)
    # The MAIL section with its links' base resolved (a bad base URL stops the start).
    mail_settings = FromConfig(notify.resolved_mail_settings)
    auth = RpcProxy("auth")

    # The mails for other services' facts: the event, and its template (in templates/).
    email_verification_requested = mail("auth.email_verification_requested", "email_verification")
    password_reset_requested = mail("auth.password_reset_requested", "password_reset")
    password_changed = mail("auth.password_changed", "password_changed")
    signup_attempted = mail("auth.signup_attempted", "signup_attempted")
    suspicious_login = mail("auth.suspicious_login", "suspicious_login")
    order_paid = mail("billing.order_paid", "receipt")
    order_refunded = mail("billing.order_refunded", "refund")
    export_ready = mail("privacy.export_ready", "export_ready")
    erasure_scheduled = mail("privacy.erasure_scheduled", "erasure_scheduled")
    breach_notice = mail("privacy.breach_notice", "breach_notice")

    # ------------------------------------------------------------ privacy

    @event_handler("privacy", "consent_changed")
    def consent_changed(self, event: dict) -> None:
        if not privacy_data.consent_changed(self.db, event["user_id"], event["marketing_email"],
                                            event["occurred_at"]):
            log.info("consent event %s changed nothing (older, or the account is erased)",
                     event["event_id"])
        self.db.commit()

    @event_handler("privacy", "restriction_changed")
    def restriction_changed(self, event: dict) -> None:
        privacy_data.restriction_changed(self.db, event["user_id"], event["restricted"],
                                         event["occurred_at"])
        self.db.commit()

    @rpc(expected_exceptions=DomainError)
    def send_marketing(self, payload) -> dict:
        """Mail one campaign to the given users who opted in and are not
        restricted, each once however often it is sent: ``{sent, skipped}``."""
        data = load_rpc(privacy_contracts.MarketingMail, payload)
        allowed = privacy_data.marketing_allowed(self.db, data["user_ids"])
        self.db.commit()
        sent = 0
        for user_id in dict.fromkeys(data["user_ids"]):
            if user_id not in allowed:
                continue
            event = privacy_data.marketing_event(data["campaign_id"], user_id, data["subject"],
                                                 data["text"])
            if self._deliver("news", event, find_recipient=self._address_of) is not None:
                sent += 1
        return {"sent": sent, "skipped": len(set(data["user_ids"])) - sent}

    def _address_of(self, event: dict) -> str | None:
        """The account's address, None when the account is gone (erased)."""
        try:
            return self.auth.get_user(str(event["user_id"]))["email"]
        except DomainError as exc:
            if exc.code == "not_found":
                return None
            raise

    def _deliver(self, template: str, event: dict, find_recipient=None):
        return notify.deliver(self.db, self.mailer, self.mail_settings, template,
                              event, find_recipient=find_recipient, sealer=self.sealer)
