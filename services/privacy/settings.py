"""The privacy service's settings: the ``PRIVACY`` section of deploy/config/privacy.yaml
(and ``MAIL_SECRETS_KEY``, which seals the erasure cancel token in its event)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from services.common.backup_rotation import Rotation
from services.common.sealed import Sealer


@dataclass(frozen=True)
class PrivacySettings:
    pseudonym_key: bytes
    # Seals the cancel token privacy.erasure_scheduled carries to notifications
    # (MAIL_SECRETS_KEY, the same value as notifications').
    sealer: Sealer
    # a request's legal deadline, from its receipt
    due: timedelta = timedelta(days=30)
    # an erasure can be cancelled this long (PRIVACY_ERASURE_GRACE_HOURS);
    # then every credential of the account is revoked...
    erasure_grace: timedelta = timedelta(hours=72)
    # ...and it starts this much later, so credentials a gateway still has
    # cached (GATEWAY_AUTH_CACHE_SECONDS, at most 30) cannot add data behind it
    erasure_settle: timedelta = timedelta(seconds=30)
    # a part not confirmed this long after it was asked is asked again...
    part_timeout: timedelta = timedelta(hours=1)
    # ...at most this many times in all; then it is failed (shown, retried by hand)
    part_max_attempts: int = 5
    assembly_max_attempts: int = 5
    assembly_lease: timedelta = timedelta(minutes=30)
    access_log_retention_days: int = 180
    rpc_timeout_seconds: float = 30.0
    work_dir: str | None = None
    # the backup job's rotation (BACKUP_KEEP_*), published in the retention schedule
    backups: Rotation = Rotation()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PrivacySettings:
        """Build from the whole service config (its ``PRIVACY`` section,
        ``MAIL_SECRETS_KEY`` and the backup rotation ``BACKUP_KEEP_*``)."""
        raw = dict(config.get("PRIVACY") or {})
        key = str(raw.get("PSEUDONYM_KEY") or "")
        if not key:
            raise ValueError("PRIVACY.PSEUDONYM_KEY must be set")
        sealer = Sealer.from_config(config)
        d = cls(pseudonym_key=b"", sealer=sealer)

        def number(name: str, default: float) -> float:
            value = raw.get(name)
            return float(default if value is None or value == "" else value)

        settings = cls(
            pseudonym_key=key.encode(),
            sealer=sealer,
            due=timedelta(days=number("DUE_DAYS", d.due.days)),
            # hours, fractions allowed (tests run with a few seconds)
            erasure_grace=timedelta(hours=number("ERASURE_GRACE_HOURS", 72)),
            erasure_settle=timedelta(seconds=number("ERASURE_SETTLE_SECONDS", 30)),
            part_timeout=timedelta(seconds=number("PART_TIMEOUT_SECONDS", 3600)),
            part_max_attempts=int(number("PART_MAX_ATTEMPTS", d.part_max_attempts)),
            assembly_max_attempts=int(number("ASSEMBLY_MAX_ATTEMPTS", d.assembly_max_attempts)),
            access_log_retention_days=int(number("ACCESS_LOG_RETENTION_DAYS",
                                                 d.access_log_retention_days)),
            rpc_timeout_seconds=number("RPC_TIMEOUT_SECONDS", d.rpc_timeout_seconds),
            work_dir=str(raw.get("WORK_DIR") or "") or None,
            backups=Rotation.from_config(config),
        )
        if settings.due <= timedelta(0) or settings.part_timeout <= timedelta(0):
            raise ValueError("PRIVACY.DUE_DAYS and PRIVACY.PART_TIMEOUT_SECONDS must be positive")
        if min(settings.erasure_grace, settings.erasure_settle) < timedelta(0):
            raise ValueError("PRIVACY.ERASURE_GRACE_HOURS and ERASURE_SETTLE_SECONDS must be >= 0")
        if settings.erasure_grace + settings.erasure_settle > settings.due / 2:
            # the erasure must be done by the due date (the legal month): the
            # grace period may take at most half of it, the rest is the work's
            raise ValueError("PRIVACY.ERASURE_GRACE_HOURS (plus ERASURE_SETTLE_SECONDS) must be "
                             "at most half of PRIVACY.DUE_DAYS")
        if settings.part_max_attempts < 1 or settings.assembly_max_attempts < 1:
            raise ValueError("PRIVACY.PART_MAX_ATTEMPTS and ASSEMBLY_MAX_ATTEMPTS must be >= 1")
        if settings.access_log_retention_days < 1:
            raise ValueError("PRIVACY.ACCESS_LOG_RETENTION_DAYS must be >= 1")
        return settings
