"""The notifications service: mail for the facts other services publish.

    nameko run --config deploy/config/notifications.yaml \
        services.notifications.service:NotificationsService

Auth's events carry the address; billing's (receipts, refunds) only the user
id, so the address is asked of auth (``auth.get_user``) when the mail is
sent: it goes to the account's current address. Auth unreachable → the
handler raises and the reliable event handler retries, then dead-letters.
"""

from __future__ import annotations

from pathlib import Path

from nameko.dependency_providers import Config
from nameko.rpc import RpcProxy

from services.common.db import Database
from services.common.errors import DomainError
from services.common.messaging import event_handler
from services.common.service import DarkroomService
from services.notifications import notify
from services.notifications.mailer import MailerProvider

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class NotificationsService(DarkroomService):
    name = "notifications"
    config = Config()
    db = Database(migrations=MIGRATIONS)
    mailer = MailerProvider()
    auth = RpcProxy("auth")

    @event_handler("auth", "email_verification_requested")
    def email_verification_requested(self, event: dict) -> None:
        """The 6-digit code, for a new account or a new address (``purpose``)."""
        self._deliver("email_verification", event)

    @event_handler("auth", "password_reset_requested")
    def password_reset_requested(self, event: dict) -> None:
        """The link ``{APP_BASE_URL}/reset-password?token=<token>``."""
        self._deliver("password_reset", event)

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

    def _address_of(self, event: dict) -> str | None:
        """The account's address, None when the account is gone (erased)."""
        try:
            return self.auth.get_user(str(event["user_id"]))["email"]
        except DomainError as exc:
            if exc.code == "not_found":
                return None
            raise

    def _deliver(self, template: str, event: dict, find_recipient=None) -> None:
        notify.deliver(self.db, self.mailer, self.config.get("MAIL") or {}, template, event,
                       find_recipient=find_recipient)
