"""Consent records and policy versions.

Consents are opt-in (no record: not given). Every change is a new row with
its time, its source and the policy version in force, so the history of a
choice can be shown, exported and proven; the current state is the newest row
per purpose. A PUT that changes nothing records nothing.

The regions a user refuses processing in (``refused_regions``) are kept the
same way, as a whole list per change (``region_refusals``): generation's
routes skip providers in them (it mirrors them from ``consent_changed``).

Policy versions are published by operators (``darkroom-ops privacy
publish-policy``). The newest is the current one; a *material* version must
be accepted again by every user (``/v1/me`` says ``acceptance_required``
until they have accepted it or a later one); a minor one need not be.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.contracts.privacy import CONSENT_PURPOSES
from services.common.errors import DomainError, conflict, not_found
from services.privacy.models import (
    ConsentChange,
    PolicyAcceptance,
    PolicyVersion,
    RegionRefusal,
)

SOURCES = ("api", "ops")


# ---------------------------------------------------------------- consents


def history(db: Session, user_id: uuid.UUID) -> list[ConsentChange]:
    """Every change of the user's consents, newest first."""
    return list(db.scalars(
        select(ConsentChange).where(ConsentChange.user_id == user_id)
        .order_by(ConsentChange.created_at.desc(), ConsentChange.id.desc())
    ))


def change_view(row: ConsentChange) -> dict:
    return {"purpose": row.purpose, "granted": row.granted, "source": row.source,
            "policy_version": row.policy_version, "changed_at": row.created_at}


def region_history(db: Session, user_id: uuid.UUID) -> list[RegionRefusal]:
    """Every change of the user's refused regions, newest first."""
    return list(db.scalars(
        select(RegionRefusal).where(RegionRefusal.user_id == user_id)
        .order_by(RegionRefusal.created_at.desc(), RegionRefusal.id.desc())
    ))


def view(db: Session, user_id: uuid.UUID) -> dict:
    rows = history(db, user_id)
    state = {purpose: False for purpose in CONSENT_PURPOSES}
    for row in reversed(rows):  # oldest first: the newest wins
        state[row.purpose] = row.granted
    regions = region_history(db, user_id)
    times = [r[0].created_at for r in (rows, regions) if r]
    return {**state, "refused_regions": list(regions[0].regions) if regions else [],
            "refused_regions_changed_at": regions[0].created_at if regions else None,
            "updated_at": max(times) if times else None,
            "history": [change_view(r) for r in rows]}


def update(db: Session, user_id: uuid.UUID, changes: dict, source: str,
           now: datetime) -> tuple[dict, bool]:
    """Record each purpose whose value changes; returns (the consents now,
    whether anything changed)."""
    if source not in SOURCES:
        raise DomainError("invalid_request", f"source must be one of {', '.join(SOURCES)}", 400,
                          {"fields": {"source": [f"One of {list(SOURCES)}."]}})
    before = view(db, user_id)
    policy = current_policy(db)
    changed = False
    version = policy.version if policy else None
    for purpose in CONSENT_PURPOSES:
        if purpose in changes and bool(changes[purpose]) != before[purpose]:
            db.add(ConsentChange(user_id=user_id, purpose=purpose, granted=bool(changes[purpose]),
                                 source=source, policy_version=version, created_at=now))
            changed = True
    regions = changes.get("refused_regions")
    if regions is not None and sorted(set(regions)) != sorted(before["refused_regions"]):
        db.add(RegionRefusal(user_id=user_id, regions=sorted(set(regions)), source=source,
                             policy_version=version, created_at=now))
        changed = True
    if changed:
        db.flush()
    return view(db, user_id), changed


# ---------------------------------------------------------------- policy versions


def _newest(db: Session, *criteria) -> PolicyVersion | None:
    return db.scalars(
        select(PolicyVersion).where(*criteria)
        .order_by(PolicyVersion.published_at.desc(), PolicyVersion.version.desc()).limit(1)
    ).first()


def current_policy(db: Session) -> PolicyVersion | None:
    return _newest(db)


def latest_material(db: Session) -> PolicyVersion | None:
    return _newest(db, PolicyVersion.material.is_(True))


def policy_view(db: Session, policy: PolicyVersion) -> dict:
    material = latest_material(db)
    return {"version": policy.version, "material": policy.material, "summary": policy.summary,
            "published_at": policy.published_at,
            "material_version": material.version if material else None}


def publish(db: Session, data: dict, now: datetime) -> PolicyVersion:
    """A new version becomes the current one; 409 ``policy_version_exists``."""
    if db.get(PolicyVersion, data["version"]) is not None:
        raise conflict(f"policy version {data['version']} was published before",
                       code="policy_version_exists")
    newest = current_policy(db)
    if newest is not None and newest.published_at >= now:
        # versions are ordered by publication time: never "before" the current one
        now = newest.published_at + timedelta(microseconds=1)
    policy = PolicyVersion(version=data["version"], material=bool(data["material"]),
                           summary=data["summary"], published_at=now)
    db.add(policy)
    db.flush()
    return policy


def accept(db: Session, user_id: uuid.UUID, version: str, now: datetime) -> None:
    """Accept the current version (accepting it twice is fine); 404 for an
    unknown version, 409 ``policy_version_outdated`` for an older one."""
    policy = db.get(PolicyVersion, version)
    if policy is None:
        raise not_found("policy version")
    current = current_policy(db)
    if current is not None and current.version != policy.version:
        raise conflict(f"version {version} is not the current policy; accept {current.version}",
                       code="policy_version_outdated", current=current.version)
    exists = db.scalar(select(PolicyAcceptance.id).where(
        PolicyAcceptance.user_id == user_id, PolicyAcceptance.version == version))
    if exists is None:
        db.add(PolicyAcceptance(user_id=user_id, version=version, accepted_at=now))
        db.flush()


def status(db: Session, user_id: uuid.UUID) -> dict:
    """``{current, accepted, acceptance_required}``: acceptance is required
    while the user has accepted neither the latest material version nor any
    version published after it."""
    current = current_policy(db)
    accepted = db.execute(
        select(PolicyAcceptance.version, PolicyVersion.published_at)
        .join(PolicyVersion, PolicyVersion.version == PolicyAcceptance.version)
        .where(PolicyAcceptance.user_id == user_id)
        .order_by(PolicyVersion.published_at.desc(), PolicyVersion.version.desc()).limit(1)
    ).first()
    material = latest_material(db)
    required = material is not None and (
        accepted is None or accepted.published_at < material.published_at)
    return {"current": current.version if current else None,
            "accepted": accepted.version if accepted else None,
            "acceptance_required": bool(required)}


def acceptances(db: Session, user_id: uuid.UUID) -> list[PolicyAcceptance]:
    return list(db.scalars(select(PolicyAcceptance).where(PolicyAcceptance.user_id == user_id)
                           .order_by(PolicyAcceptance.accepted_at)))
