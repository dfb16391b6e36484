"""Personal-data breaches: the incident, its 72-hour regulator clock, the
affected users, their notices and the regulator report (policy 000: "we will
notify affected users and report to regulators within 72 hours").

The one home of the breach rules:

- the regulator deadline is :data:`REGULATOR_HOURS` after *detection*, and an
  incident still open (not reported) :data:`OVERDUE_HOURS` after detection is
  overdue (``darkroom-ops privacy report`` and a metric show it);
- an affected user is kept as a keyed hash of the user id (``psn:``,
  :func:`services.common.ids.pseudonym`, the same key as erased subjects), and
  the user id itself only until the notice is sent or the user is erased;
  no address is ever kept here (notifications asks auth for it when it mails);
- a user erased since the set was computed gets no notice;
- every change writes a ``breach_log`` row; none of this is deleted by the
  user's erasure (a legal obligation to document breaches).

The caller (the service shell) commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.common.db import locked
from services.common.errors import conflict, invalid_request, not_found
from services.common.ids import client_id, isoformat, pseudonym
from services.common.messaging import Dispatch
from services.privacy.access_logs import erased_users
from services.privacy.models import AccessLog, BreachIncident, BreachLog, BreachSubject

REGULATOR_HOURS = 72
OVERDUE_HOURS = 48
STATES = ("open", "reported")
NOTICES = ("pending", "sent", "skipped_erased")
# The data categories an incident names, and where Darkroom can see who was
# affected for each: auth (accounts signed up or signed in within the window),
# storage (owners of objects created within it), access_logs (users whose
# requests the gateway logged within it).
CATEGORIES = {
    "account": ("auth",),
    "credentials": ("auth",),
    "payments": ("auth",),
    "images": ("storage",),
    "prompts": ("storage",),
    "access_logs": ("access_logs",),
}
SOURCES = ("auth", "storage", "access_logs")
CONSEQUENCES = {
    "account": "phishing or spam to the exposed addresses; account takeover attempts",
    "credentials": "account takeover; reuse of the password on other sites",
    "payments": "fraud attempts using the exposed billing details",
    "images": "disclosure of private images; embarrassment, reputational harm",
    "prompts": "disclosure of private prompts and what they reveal",
    "access_logs": "disclosure of when and from which network the service was used",
}
NOTIFY_BATCH_MAX = 500


def deadline(detected_at: datetime) -> datetime:
    """When the regulator must have been told."""
    return detected_at + timedelta(hours=REGULATOR_HOURS)


def is_overdue(incident: BreachIncident, now: datetime) -> bool:
    """Still open :data:`OVERDUE_HOURS` after detection."""
    return incident.state == "open" and now >= incident.detected_at + timedelta(hours=OVERDUE_HOURS)


def subject_of(key: bytes, user_id) -> str:
    return pseudonym(key, user_id)


def _audit(db: Session, incident: BreachIncident, action: str, now: datetime,
           detail: str | None = None) -> None:
    incident.updated_at = now
    db.add(BreachLog(incident_id=incident.id, at=now, action=action,
                     detail=detail[:500] if detail else None))


def _categories(values) -> list[str]:
    chosen = list(dict.fromkeys(values or []))
    unknown = [c for c in chosen if c not in CATEGORIES]
    if not chosen or unknown:
        raise invalid_request(f"categories: one or more of {', '.join(CATEGORIES)}",
                              unknown=unknown)
    return chosen


def open_incident(db: Session, summary: str, categories, detected_at: datetime,
                  now: datetime) -> BreachIncident:
    """Record an incident; its regulator clock runs from ``detected_at``."""
    summary = (summary or "").strip()
    if not summary:
        raise invalid_request("summary: describe the breach")
    if detected_at > now + timedelta(minutes=5):
        raise invalid_request("detected_at is in the future")
    incident = BreachIncident(id=uuid.uuid4(), summary=summary,
                              categories=_categories(categories), state="open",
                              detected_at=detected_at, opened_at=now,
                              deadline_at=deadline(detected_at), affected_count=0,
                              records_count=0, updated_at=now)
    db.add(incident)
    db.flush()
    _audit(db, incident, "opened", now, f"categories: {', '.join(incident.categories)}")
    return incident


def get(db: Session, incident_id, lock: bool = False) -> BreachIncident:
    ident = client_id(incident_id, "incident")
    incident = locked(db, BreachIncident, ident) if lock else db.get(BreachIncident, ident)
    if incident is None:
        raise not_found("incident")
    return incident


def sources_for(incident: BreachIncident, categories=None) -> list[str]:
    """Where to look for the affected users: the sources of ``categories``
    (default: the incident's), which must be among the incident's."""
    chosen = _categories(categories) if categories else list(incident.categories)
    outside = [c for c in chosen if c not in incident.categories]
    if outside:
        raise invalid_request("a category the incident does not name", categories=outside)
    return [s for s in SOURCES if any(s in CATEGORIES[c] for c in chosen)]


def check_window(window_from: datetime, window_to: datetime) -> None:
    if window_from >= window_to:
        raise invalid_request("the window's start must be before its end")


def access_log_users(db: Session, window_from: datetime, window_to: datetime) -> dict:
    """Users whose requests were logged within the window: ``{user_id: rows}``."""
    rows = db.execute(select(AccessLog.user_id, func.count())
                      .where(AccessLog.user_id.is_not(None), AccessLog.at >= window_from,
                             AccessLog.at < window_to)
                      .group_by(AccessLog.user_id)).all()
    return {user_id: count for user_id, count in rows}


def record_affected(db: Session, key: bytes, incident: BreachIncident, window_from: datetime,
                    window_to: datetime, found: Mapping[str, Mapping], now: datetime) -> dict:
    """Add the users ``found`` (``{source: {user_id: records}}``) to the
    incident's set; a user there before keeps their notice. A user already
    erased is kept as a hash only, with no notice to send. Returns the counts."""
    if incident.state != "open":
        raise conflict("the incident is reported; open a new one", code="incident_reported")
    merged: dict[uuid.UUID, dict] = {}
    for source, users in found.items():
        for user_id, records in users.items():
            entry = merged.setdefault(uuid.UUID(str(user_id)), {"sources": set(), "records": 0})
            entry["sources"].add(source)
            entry["records"] += int(records)
    erased = erased_users(db, key, list(merged))
    existing = {s.subject: s for s in db.scalars(
        select(BreachSubject).where(BreachSubject.incident_id == incident.id))}
    added = 0
    for user_id, entry in merged.items():
        subject = subject_of(key, user_id)
        row = existing.get(subject)
        if row is None:
            gone = user_id in erased
            db.add(BreachSubject(incident_id=incident.id, subject=subject,
                                 user_id=None if gone else user_id,
                                 sources=sorted(entry["sources"]), records=entry["records"],
                                 notice="skipped_erased" if gone else "pending",
                                 notice_at=now if gone else None))
            added += 1
        else:
            row.sources = sorted(set(row.sources) | entry["sources"])
            row.records = max(row.records, entry["records"])
    db.flush()
    incident.window_from = min(filter(None, (incident.window_from, window_from)))
    incident.window_to = max(filter(None, (incident.window_to, window_to)))
    incident.affected_at = now
    incident.affected_count, incident.records_count = db.execute(
        select(func.count(), func.coalesce(func.sum(BreachSubject.records), 0))
        .where(BreachSubject.incident_id == incident.id)).one()
    incident.sources = {source: len(users) for source, users in found.items()}
    if added:
        incident.notified_at = None  # new people to tell
    _audit(db, incident, "affected_computed", now,
           f"{isoformat(window_from)} to {isoformat(window_to)}: {len(merged)} found, "
           f"{added} new, {incident.affected_count} in all")
    return {"found": len(merged), "added": added, "affected": incident.affected_count,
            "records": incident.records_count, "by_source": incident.sources}


def notice_counts(db: Session, incident_id: uuid.UUID) -> dict[str, int]:
    rows = db.execute(select(BreachSubject.notice, func.count())
                      .where(BreachSubject.incident_id == incident_id)
                      .group_by(BreachSubject.notice)).all()
    return {notice: dict(rows).get(notice, 0) for notice in NOTICES}


def notify_batch(db: Session, key: bytes, incident: BreachIncident, now: datetime,
                 dispatch: Dispatch, limit: int = 100) -> dict:
    """Hand one batch of pending notices to notifications (through the
    outbox: the commit publishes ``privacy.breach_notice``, which
    notifications mails once per event). A user erased since gets none. A
    notice is ``sent`` once handed over, and the user id is dropped then.
    Returns this batch's ``sent_now`` and ``skipped_now``, the incident's
    ``notices`` by status and its ``pending`` count. Call again while
    ``pending`` is not 0: an interrupted run resumes where
    it stopped, and a finished one sends nothing more."""
    if incident.affected_at is None:
        raise conflict("compute the affected users first (breach affected)",
                       code="affected_not_computed")
    limit = max(1, min(int(limit), NOTIFY_BATCH_MAX))
    batch = db.scalars(select(BreachSubject)
                       .where(BreachSubject.incident_id == incident.id,
                              BreachSubject.notice == "pending")
                       .order_by(BreachSubject.subject).limit(limit)
                       .with_for_update(skip_locked=True)).all()
    erased = erased_users(db, key, [s.user_id for s in batch if s.user_id is not None])
    sent = skipped = 0
    for row in batch:
        if row.user_id is None or row.user_id in erased:
            row.notice, skipped = "skipped_erased", skipped + 1
        else:
            dispatch("breach_notice", {
                "incident_id": str(incident.id), "user_id": str(row.user_id),
                "summary": incident.summary, "categories": list(incident.categories),
                "detected_at": incident.detected_at})
            row.notice, sent = "sent", sent + 1
        row.user_id, row.notice_at = None, now
    db.flush()
    counts = notice_counts(db, incident.id)
    if batch:
        _audit(db, incident, "notices_sent", now, f"{sent} sent, {skipped} skipped (erased)")
    if counts["pending"] == 0 and incident.notified_at is None:
        incident.notified_at = now
        _audit(db, incident, "notified", now, f"{counts['sent']} notices in all")
    return {"sent_now": sent, "skipped_now": skipped, "pending": counts["pending"],
            "notices": counts}


def forget_user(db: Session, key: bytes, user_id: uuid.UUID) -> int:
    """A user's erasure: their breach records stay (a legal obligation) as
    the keyed hash only, and a notice not sent yet never will be."""
    subject = subject_of(key, user_id)
    db.execute(update(BreachSubject)
               .where(BreachSubject.subject == subject, BreachSubject.notice == "pending")
               .values(notice="skipped_erased")
               .execution_options(synchronize_session=False))
    return db.execute(update(BreachSubject).where(BreachSubject.user_id == user_id)
                      .values(user_id=None)
                      .execution_options(synchronize_session=False)).rowcount or 0


def build_report(db: Session, incident: BreachIncident, contact: str, measures: list[str],
                 consequences: list[str] | None, now: datetime) -> dict:
    """The regulator report (GDPR art. 33(3)): nature, categories and
    approximate numbers of people and records, likely consequences, measures
    taken, contact point. Marks the incident reported (writing it again
    replaces it, audited)."""
    contact = (contact or "").strip()
    measures = [m.strip() for m in measures or [] if m and m.strip()]
    if not contact:
        raise invalid_request("contact: who the regulator can ask (the DPO's address)")
    if not measures:
        raise invalid_request("measures: at least one measure taken or proposed")
    counts = notice_counts(db, incident.id)
    report = {
        "incident_id": str(incident.id),
        "generated_at": isoformat(now),
        "nature": incident.summary,
        "detected_at": isoformat(incident.detected_at),
        "deadline_at": isoformat(incident.deadline_at),
        "reported_within_deadline": now <= incident.deadline_at,
        "window": {"from": isoformat(incident.window_from), "to": isoformat(incident.window_to)},
        "categories": list(incident.categories),
        "approximate_people": incident.affected_count,
        "approximate_records": incident.records_count,
        "people_by_source": dict(incident.sources or {}),
        "likely_consequences": [c.strip() for c in consequences or [] if c.strip()]
        or [CONSEQUENCES[c] for c in incident.categories],
        "measures_taken": measures,
        "users_notified": counts["sent"],
        "users_not_notified_erased": counts["skipped_erased"],
        "users_pending_notice": counts["pending"],
        "contact_point": contact,
    }
    again = incident.state == "reported"
    incident.report, incident.state, incident.reported_at = report, "reported", now
    _audit(db, incident, "report_replaced" if again else "reported", now,
           f"{incident.affected_count} people, {incident.records_count} records")
    return report


def view(db: Session, incident: BreachIncident, now: datetime) -> dict:
    left = (incident.deadline_at - now).total_seconds() / 3600
    return {
        "id": str(incident.id), "summary": incident.summary,
        "categories": list(incident.categories), "state": incident.state,
        "detected_at": isoformat(incident.detected_at), "opened_at": isoformat(incident.opened_at),
        "deadline_at": isoformat(incident.deadline_at),
        "hours_left": round(left, 1) if incident.state == "open" else None,
        "overdue": is_overdue(incident, now),
        "affected": incident.affected_count, "records": incident.records_count,
        "affected_at": isoformat(incident.affected_at),
        "notified_at": isoformat(incident.notified_at),
        "reported_at": isoformat(incident.reported_at),
        "notices": notice_counts(db, incident.id),
    }


def list_incidents(db: Session, now: datetime, limit: int = 200) -> list[dict]:
    """Open incidents first (nearest deadline first), then the reported ones, newest first."""
    rows = db.scalars(select(BreachIncident).order_by(BreachIncident.detected_at.desc())
                      .limit(limit)).all()
    rows = sorted(rows, key=lambda i: (i.state != "open",
                                       i.deadline_at if i.state == "open" else now - i.detected_at))
    return [view(db, incident, now) for incident in rows]


def overdue(db: Session, now: datetime) -> list[dict]:
    """Incidents still open :data:`OVERDUE_HOURS` after detection."""
    cutoff = now - timedelta(hours=OVERDUE_HOURS)
    rows = db.scalars(select(BreachIncident)
                      .where(BreachIncident.state == "open", BreachIncident.detected_at <= cutoff)
                      .order_by(BreachIncident.detected_at)).all()
    return [{"id": str(i.id), "summary": i.summary, "detected_at": isoformat(i.detected_at),
             "deadline_at": isoformat(i.deadline_at)} for i in rows]
