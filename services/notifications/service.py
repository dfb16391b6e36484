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
from nameko.rpc import RpcProxy, rpc

from services.common.contracts import load_rpc
from services.common.contracts import privacy as privacy_contracts
from services.common.db import Database
from services.common.errors import DomainError
from services.common.messaging import EventPublisher, event_handler
from services.common.privacy_parts import PrivacyParticipant
from services.common.sealed import Sealer
from services.common.service import DarkroomService, FromConfig
from services.notifications import notify
from services.notifications import privacy as privacy_data
from services.notifications.mailer import MailerProvider
from services.notifications.models import outbox

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class NotificationsService(PrivacyParticipant, DarkroomService):
    name = "notifications"
    privacy = privacy_data  # its part of privacy requests
    config = Config()
    db = Database(migrations=MIGRATIONS)
    dispatch = EventPublisher(outbox=outbox)
    mailer = MailerProvider()
    # Opens the codes and tokens auth's and privacy's events carry sealed (MAIL_SECRETS_KEY).
    sealer = FromConfig(Sealer.from_config)
    auth = RpcProxy("auth")

    @event_handler("auth", "email_verification_requested")
    def email_verification_requested(self, event: dict) -> None:
        """The 6-digit code (sealed in the event), for a new account or a new
        address (``purpose``)."""
        self._deliver("email_verification", event)

    @event_handler("auth", "password_reset_requested")
    def password_reset_requested(self, event: dict) -> None:
        """The link ``{APP_BASE_URL}/reset-password?token=<token>`` (the token
        arrives sealed and is opened only to write the mail)."""
        self._deliver("password_reset", event)

    @event_handler("auth", "password_changed")
    def password_changed(self, event: dict) -> None:
        """The password was changed, every session and API key revoked."""
        self._deliver("password_changed", event)

    @event_handler("auth", "signup_attempted")
    def signup_attempted(self, event: dict) -> None:
        """Someone tried to register the address, which has an account already."""
        self._deliver("signup_attempted", event)

    @event_handler("auth", "suspicious_login")
    def suspicious_login(self, event: dict) -> None:
        """A warning with the network, user agent and time of the sign-in."""
        self._deliver("suspicious_login", event)

    @event_handler("billing", "order_paid")
    def order_paid(self, event: dict) -> None:
        """The receipt: what was bought, credits, amount, order id, date."""
        self._deliver("receipt", event, find_recipient=self._address_of)

    @event_handler("billing", "order_refunded")
    def order_refunded(self, event: dict) -> None:
        """The refund: amount returned, credits taken back, order id, date."""
        self._deliver("refund", event, find_recipient=self._address_of)

    @event_handler("privacy", "export_ready")
    def export_ready(self, event: dict) -> None:
        """The archive is ready: where to download it, until when."""
        self._deliver("export_ready", event, find_recipient=self._address_of)

    @event_handler("privacy", "erasure_scheduled")
    def erasure_scheduled(self, event: dict) -> None:
        """The erasure waits out its grace period: when it starts, and the
        single-use link that cancels it (its token arrives sealed)."""
        self._deliver("erasure_scheduled", event, find_recipient=self._address_of)

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
        return notify.deliver(self.db, self.mailer, self.config.get("MAIL") or {}, template,
                              event, find_recipient=find_recipient, sealer=self.sealer)
