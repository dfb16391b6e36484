"""What the privacy service itself holds about a user: consents, policy
acceptances, a processing restriction, access logs and the user's requests.
Its part of an export and of an erasure."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.common.contracts.privacy import CONSENT_PURPOSES
from services.common.db import locked
from services.common.errors import conflict
from services.common.ids import isoformat
from services.privacy import access_logs, consent
from services.privacy.models import (
    AccessLog,
    ConsentChange,
    PolicyAcceptance,
    PrivacyRequest,
    RegionRefusal,
    Restriction,
)

ABOUT = (
    "What the privacy service holds about you: every change of your consents and of the "
    "regions you refuse processing in (with its time, source and the policy version then in "
    "force), the policy versions you accepted, "
    "whether processing of your data is restricted, your privacy requests, and the access "
    "log of your requests to the API (method, route, status, time and your network truncated "
    "to a /24 or /48, never a full address, a request body or a query string), kept "
    "{days} days."
)


# ---------------------------------------------------------------- restriction


def is_restricted(db: Session, user_id: uuid.UUID) -> bool:
    row = db.get(Restriction, user_id)
    return bool(row and row.restricted)


def set_restricted(db: Session, user_id: uuid.UUID, restricted: bool, now: datetime) -> None:
    """409 ``already_restricted`` / ``not_restricted`` when nothing would change."""
    row = locked(db, Restriction, user_id)
    if bool(row and row.restricted) == restricted:
        raise conflict("processing of this account is already restricted" if restricted
                       else "processing of this account is not restricted",
                       code="already_restricted" if restricted else "not_restricted")
    if row is None:
        db.add(Restriction(user_id=user_id, restricted=restricted, changed_at=now))
    else:
        row.restricted, row.changed_at = restricted, now
    db.flush()


# ---------------------------------------------------------------- export and erasure


def export(db: Session, user_id: uuid.UUID, retention_days: int) -> dict:
    restriction = db.get(Restriction, user_id)
    consents = consent.view(db, user_id)
    requests = db.scalars(select(PrivacyRequest).where(PrivacyRequest.user_id == user_id)
                          .order_by(PrivacyRequest.created_at)).all()
    return {
        "about": ABOUT.format(days=retention_days),
        "consents": {purpose: consents[purpose] for purpose in CONSENT_PURPOSES},
        "consent_history": [
            {**consent.change_view(r), "changed_at": isoformat(r.created_at)}
            for r in reversed(consent.history(db, user_id))
        ],
        "refused_regions": consents["refused_regions"],
        "refused_regions_history": [
            {"refused_regions": list(r.regions), "source": r.source,
             "policy_version": r.policy_version, "changed_at": isoformat(r.created_at)}
            for r in reversed(consent.region_history(db, user_id))
        ],
        "policy_acceptances": [
            {"version": a.version, "accepted_at": isoformat(a.accepted_at)}
            for a in consent.acceptances(db, user_id)
        ],
        "processing_restricted": bool(restriction and restriction.restricted),
        "restriction_changed_at": isoformat(restriction.changed_at) if restriction else None,
        "requests": [
            {"id": str(r.id), "type": r.type, "status": r.status,
             "created_at": isoformat(r.created_at), "due_at": isoformat(r.due_at),
             "completed_at": isoformat(r.completed_at)}
            for r in requests
        ],
        "access_log": [
            {"at": isoformat(a.at), "method": a.method, "route": a.route, "status": a.status,
             "network": a.network}
            for a in access_logs.for_user(db, user_id)
        ],
    }


def erase(db: Session, user_id: uuid.UUID) -> dict[str, int]:
    """Delete the user's consents, refused regions, acceptances, restriction and access logs
    (their requests lose the user id when the erasure completes); returns
    rows deleted per table. The caller commits."""
    tables = {}
    for name, model in (("consent_changes", ConsentChange), ("region_refusals", RegionRefusal),
                        ("policy_acceptances", PolicyAcceptance),
                        ("restrictions", Restriction), ("access_logs", AccessLog)):
        tables[name] = db.execute(
            delete(model).where(model.user_id == user_id)
            .execution_options(synchronize_session=False)).rowcount or 0
    return tables
