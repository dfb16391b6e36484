"""The notifications service: mail for the facts other services publish.

    nameko run --config deploy/config/notifications.yaml \
        services.notifications.service:NotificationsService
"""

from __future__ import annotations

from pathlib import Path

from nameko.dependency_providers import Config

from services.common.db import Database
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

    def _deliver(self, template: str, event: dict) -> None:
        notify.deliver(self.db, self.mailer, self.config.get("MAIL") or {}, template, event)
