"""The retention schedule actually enforced, for ``GET /v1/privacy/retention``.

Each service answers ``retention_schedule`` with what its own timers and
settings enforce (so the page cannot drift from the code or the
configuration of the running services); this module adds the privacy
service's own items and gathers the others, asking them all at once and
waiting a few seconds at most. A service that does not answer is listed as
``unavailable`` rather than described from a guess.
"""

from __future__ import annotations

from services.common.contracts.privacy import PARTICIPANTS
from services.privacy.settings import PrivacySettings


def own_items(settings: PrivacySettings) -> list[dict]:
    grace = settings.erasure_grace.total_seconds()
    settle = settings.erasure_settle.total_seconds()
    return [
        {"service": "privacy", "data": "access logs (method, route, status, time, network /24 or /48)",
         "kept": f"{settings.access_log_retention_days} days",
         "days": float(settings.access_log_retention_days),
         "enforced_by": "the privacy service's hourly purge"},
        {"service": "privacy",
         "data": "consent changes, refused regions, policy acceptances, restriction",
         "kept": "until the account is erased", "days": None,
         "enforced_by": "erasure (every change kept until then, as proof of consent)"},
        {"service": "privacy", "data": "privacy requests and their audit trail",
         "kept": "indefinitely, without any personal data once the account is erased",
         "days": None, "enforced_by": "erasure removes the user id from every request"},
        {"service": "privacy",
         "data": "breach records (incidents, affected users as keyed hashes, notice status, "
                 "regulator reports, their audit log)",
         "kept": "indefinitely, as the documentation of breaches the law requires; not deleted "
                 "by an erasure; a user id only until the user's notice is sent or the user "
                 "is erased",
         "days": None,
         "enforced_by": "the notice and the erasure drop the user id (docs/runbooks/breach.md)"},
        {"service": "backups",
         "data": "backup sets: every service's database and the object store, encrypted",
         "kept": f"{settings.backups.describe()}, then deleted by the next backup run "
                 f"(at most about {settings.backups.longest_days()} days); a restore erases "
                 "again every user erased since the set was taken",
         "days": float(settings.backups.longest_days()),
         "enforced_by": "darkroom-ops backup run (its rotation, BACKUP_KEEP_DAILY, "
                        "BACKUP_KEEP_WEEKLY, BACKUP_KEEP_MONTHLY)"},
        {"service": "privacy", "data": "closed (erased) accounts",
         "kept": f"deleted everywhere {grace / 3600:g} hours after the erasure request "
                 f"(grace period, cancellable; no jobs, no spending meanwhile) plus "
                 f"{int(settle)} s (credential caches expire)",
         "days": round((grace + settle) / 86400, 6),
         "enforced_by": "the privacy service's timer starts the erasure; every service confirms"},
        {"service": "privacy", "data": "a request's legal deadline",
         "kept": f"answered within {settings.due.days} days", "days": float(settings.due.days),
         "enforced_by": "due date tracked; overdue requests listed first by darkroom-ops privacy report"},
    ]


def gather(ask) -> tuple[list[dict], list[str]]:
    """``ask(service)`` returns a zero-argument callable that waits for the
    service's answer (or raises). Every participant is asked before any
    answer is awaited."""
    pending = {}
    unavailable = []
    for service in PARTICIPANTS:
        try:
            pending[service] = ask(service)
        except Exception:
            unavailable.append(service)
    items = []
    for service, wait in pending.items():
        try:
            answer = wait()
        except Exception:
            unavailable.append(service)
            continue
        for item in answer.get("items") or []:
            items.append({**item, "service": service})
    return items, sorted(unavailable)
