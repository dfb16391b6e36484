"""Data-subject requests: export, erasure, restriction and lifting it.

An export or an erasure is orchestrated by events. The request has one part
per service that holds personal data (:data:`PART_SERVICES`), in phases:

- export: one phase, every service at once;
- erasure: generation first (no job may run, or store an output, behind the
  erasure), then everyone else.

Starting a phase marks its parts ``pending`` and publishes
``privacy.<type>_requested`` naming those services; each answers with its
part (``<service>.export_part_ready`` / ``<service>.erasure_completed``),
which is recorded once (a second answer for the same request and service
changes nothing). When a phase is complete the next one starts; when the last
is, an erasure completes and an export is assembled (:mod:`archive`). A
service that is down answers when it returns: its queue keeps the event.

A part not confirmed ``PART_TIMEOUT_SECONDS`` after it was asked is asked
again by the timer (:func:`tick`), at most ``PART_MAX_ATTEMPTS`` times in all;
then it is ``failed`` and so is the request: it shows in ``darkroom-ops privacy
report`` until an operator retries it (:func:`retry`). Nothing is dropped: a
late answer still completes the part.

An erasure is asked with a session and a fresh re-authentication
(:func:`check_erasure_caller`; the password is checked by auth). It then
waits out its grace period (``PRIVACY_ERASURE_GRACE_HOURS``):
``privacy.erasure_scheduled`` makes generation refuse new jobs and billing
refuse holds, and notifications mails the owner a single-use cancel link
(the event carries its token sealed under ``MAIL_SECRETS_KEY``; the request
keeps only its hash);
:func:`cancel` (a session of the owner) or :func:`cancel_with_token` (the
link) ends it with ``privacy.erasure_cancelled``. When the grace period is
over the service revokes every credential of the account (auth's
``revoke_all``, :func:`claim_revocation` / :func:`credentials_revoked`) and
the erasure starts the settle time later, which outlasts the gateways'
credential cache. After its last phase generation is asked once more
(:data:`RECHECK_PHASE`): a job submitted while the erasure ran is erased
too, before the certificate exists. When it completes, the user id is
removed from every request of the user: the requests, their parts' counts
and ``request_log`` are the audit trail. The due date is counted from the
request, grace period included.

Restriction and lifting it take effect at once: the state is recorded here
and ``privacy.restriction_changed`` tells generation, notifications and auth.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from services.common import metrics
from services.common.contracts.privacy import OPEN_STATUSES, PART_SERVICES, REQUEST_TYPES
from services.common.db import aware, locked
from services.common.errors import DomainError, conflict, forbidden, not_found
from services.common.ids import client_id, new_id, pseudonym, trusted_id
from services.common.messaging import Dispatch
from services.common.pagination import paginate
from services.privacy import own_data
from services.privacy.models import ErasedSubject, PrivacyRequest, RequestLog, RequestPart
from services.privacy.settings import PrivacySettings

RESTRICTION_TYPES = ("restriction", "lift_restriction")
ERASURE_FIRST = ("generation",)
ASSEMBLY_BACKOFF = timedelta(seconds=30)


def phases(request_type: str) -> tuple[tuple[str, ...], ...]:
    if request_type == "export":
        return (PART_SERVICES,)
    if request_type == "erasure":
        return (ERASURE_FIRST, tuple(s for s in PART_SERVICES if s not in ERASURE_FIRST))
    return ()


# After the last phase of an erasure, generation is asked once more.
RECHECK_PHASE = len(phases("erasure")) + 1


def _phase_parts(request: PrivacyRequest, parts: list[RequestPart], number: int
                 ) -> list[RequestPart]:
    if request.type == "erasure" and number == RECHECK_PHASE:
        return [p for p in parts if p.service in ERASURE_FIRST]
    return [p for p in parts if p.phase == number]


def log(db: Session, request_id: uuid.UUID, action: str, now: datetime,
        service: str | None = None, detail: str | None = None) -> None:
    db.add(RequestLog(request_id=request_id, at=now, action=action, service=service,
                      detail=detail[:500] if detail else None))


def parts_of(db: Session, request_id: uuid.UUID) -> list[RequestPart]:
    rows = db.scalars(select(RequestPart).where(RequestPart.request_id == request_id)).all()
    order = {s: i for i, s in enumerate(PART_SERVICES)}
    return sorted(rows, key=lambda p: (p.phase, order.get(p.service, 99)))


# ---------------------------------------------------------------- creating


def session_required() -> DomainError:
    return forbidden("this needs a signed-in session, not an API key", code="session_required")


def check_erasure_caller(credential_type: str | None, password: str | None) -> None:
    """An erasure is asked with a session, never an API key (403
    ``session_required``: a leaked key cannot erase the account), and carries the
    account's password (401 ``reauthentication_required``; auth checks it,
    and the TOTP code when two-factor sign-in is on)."""
    if credential_type != "session":
        raise session_required()
    if not password:
        raise DomainError("reauthentication_required",
                          "confirm it is you: give the account's password", 401,
                          {"reason": "password"})


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(db: Session, settings: PrivacySettings, user_id: uuid.UUID, request_type: str,
           now: datetime, dispatch: Dispatch, grace: bool = True) -> PrivacyRequest:
    """A new request (the caller commits; a concurrent duplicate fails the
    flush or the commit on ``(user_id, open_type)``). An erasure waits for
    its grace period (:func:`tick`), unless ``grace`` is False (an account
    reported as a minor's: no grace, no cancel link); an export starts at once."""
    if request_type in RESTRICTION_TYPES:
        return _restriction(db, user_id, request_type == "restriction", now, dispatch)
    existing = open_request(db, user_id, request_type)
    if existing is not None:
        raise request_open(request_type, existing)
    request = PrivacyRequest(
        id=new_id(), user_id=user_id, type=request_type, status="pending", open_type=request_type,
        phase=0, created_at=now, due_at=now + settings.due, updated_at=now, assembly_attempts=0,
    )
    token = None
    if request_type == "erasure" and not grace:
        request.starts_at = now
    elif request_type == "erasure":
        token = secrets.token_urlsafe(32)
        request.starts_at = now + settings.erasure_grace
        request.cancel_token_hash = token_hash(token)
    db.add(request)
    db.flush()
    for number, services in enumerate(phases(request_type), start=1):
        for service in services:
            db.add(RequestPart(request_id=request.id, service=service, phase=number,
                               status="waiting", attempts=0))
    log(db, request.id, "created", now, detail=request_type)
    if token is not None:
        dispatch("erasure_scheduled", {"request_id": str(request.id), "user_id": str(user_id),
                                       "starts_at": request.starts_at.isoformat(),
                                       "sealed_cancel_token": settings.sealer.seal(token)})
    elif request_type != "erasure":  # an erasure without grace: the timer starts it now
        start(db, request, now, dispatch)
    db.flush()
    return request


def without_grace(db: Session, request_id, now: datetime) -> PrivacyRequest | None:
    """An erasure still in its grace period, made to start now (its cancel
    link stops working); None when it is past that (it goes on anyway)."""
    request = db.scalar(select(PrivacyRequest).where(
        PrivacyRequest.id == request_id, PrivacyRequest.type == "erasure",
        PrivacyRequest.status == "pending", PrivacyRequest.revoked_at.is_(None),
    ).with_for_update())
    if request is None:
        return None
    request.starts_at, request.cancel_token_hash, request.updated_at = now, None, now
    return request


def open_request(db: Session, user_id: uuid.UUID, request_type: str) -> uuid.UUID | None:
    return db.scalar(select(PrivacyRequest.id).where(
        PrivacyRequest.user_id == user_id, PrivacyRequest.open_type == request_type))


def request_open(request_type: str, request_id) -> DomainError:
    return conflict(f"an {request_type} request of this account is already open",
                    request_id=str(request_id), type=request_type)


def _restriction(db: Session, user_id: uuid.UUID, restricted: bool, now: datetime,
                 dispatch: Dispatch) -> PrivacyRequest:
    own_data.set_restricted(db, user_id, restricted, now)
    request = PrivacyRequest(
        id=new_id(), user_id=user_id, type="restriction" if restricted else "lift_restriction",
        status="completed", open_type=None, phase=0, created_at=now, due_at=now, started_at=now,
        completed_at=now, updated_at=now, assembly_attempts=0,
    )
    db.add(request)
    db.flush()
    dispatch("restriction_changed", {"user_id": str(user_id), "restricted": restricted})
    log(db, request.id, "completed", now, detail="restricted" if restricted else "lifted")
    return request


def start(db: Session, request: PrivacyRequest, now: datetime, dispatch: Dispatch) -> None:
    request.status, request.started_at = "in_progress", now
    log(db, request.id, "started", now)
    _start_phase(db, request, 1, now, dispatch)


def _start_phase(db: Session, request: PrivacyRequest, number: int, now: datetime,
                 dispatch: Dispatch) -> None:
    parts = _phase_parts(request, parts_of(db, request.id), number)
    for part in parts:
        part.status, part.attempts, part.published_at = "pending", 1, now
    request.phase, request.status, request.updated_at = number, "in_progress", now
    _publish(request, [p.service for p in parts], dispatch)
    what = "recheck" if _rechecking(request) else f"phase {number}"
    log(db, request.id, "phase_started", now, detail=f"{what}: "
        + ", ".join(p.service for p in parts))


def _rechecking(request: PrivacyRequest) -> bool:
    return request.type == "erasure" and request.phase == RECHECK_PHASE


def _publish(request: PrivacyRequest, services: list[str], dispatch: Dispatch) -> None:
    payload = {"request_id": str(request.id), "user_id": str(request.user_id),
               "services": services}
    if _rechecking(request):
        payload["recheck"] = True
    dispatch(f"{request.type}_requested", payload)


# ---------------------------------------------------------------- answers


def _confirm(db: Session, request_id, service: str, now: datetime
             ) -> tuple[PrivacyRequest, RequestPart] | None:
    """Lock the request (answers of one request are recorded one at a time,
    so exactly one of them sees the phase complete) and mark the part done;
    None when there is nothing to record (done before, unknown, cancelled)."""
    request = locked(db, PrivacyRequest, client_id(request_id, "request"))
    if request is None or request.status in ("cancelled", "completed") or request.user_id is None:
        return None
    part = locked(db, RequestPart, (request.id, service))
    if part is None or part.status in ("completed", "waiting"):
        return None
    part.status, part.completed_at = "completed", now
    request.updated_at = now
    return request, part


def record_export_part(db: Session, event: dict, now: datetime) -> PrivacyRequest | None:
    found = _confirm(db, event["request_id"], event["service"], now)
    if found is None:
        return None
    request, part = found
    part.data = json.dumps(event["data"]) if event.get("data") is not None else None
    part.object_id = event.get("object_id")
    part.about = event.get("about")
    part.withheld = [{"what": w["what"], "why": w["why"]} for w in event.get("withheld") or []]
    log(db, request.id, "part_confirmed", now, service=part.service,
        detail="stored object" if part.object_id else "inline")
    return request


def record_erasure_part(db: Session, event: dict, now: datetime) -> PrivacyRequest | None:
    """Record a service's answer. While generation is asked again (the
    recheck) only its answer to that is taken (a late copy of its first one
    is not) and its counts are added to the first ones."""
    request = locked(db, PrivacyRequest, client_id(event["request_id"], "request"))
    if request is not None and _rechecking(request) != bool(event.get("recheck")):
        return None
    found = _confirm(db, event["request_id"], event["service"], now)
    if found is None:
        return None
    request, part = found
    counts = {"rows_deleted": int(event["rows_deleted"]),
              "rows_pseudonymised": int(event.get("rows_pseudonymised") or 0),
              "objects_deleted": int(event.get("objects_deleted") or 0),
              "bytes_deleted": int(event.get("bytes_deleted") or 0)}
    tables = {str(k): int(v) for k, v in (event.get("tables") or {}).items()}
    if _rechecking(request):
        for key, value in counts.items():
            counts[key] = value + (getattr(part, key) or 0)
        for name, value in (part.tables or {}).items():
            tables[name] = tables.get(name, 0) + int(value)
        part.finished_at = event["finished_at"]
    else:
        part.started_at, part.finished_at = event["started_at"], event["finished_at"]
    for key, value in counts.items():
        setattr(part, key, value)
    part.tables = tables
    log(db, request.id, "part_confirmed", now, service=part.service,
        detail=f"{part.rows_deleted} rows deleted, {part.rows_pseudonymised} pseudonymised, "
               f"{part.objects_deleted} objects")
    return request


def advance(db: Session, settings: PrivacySettings, request: PrivacyRequest, now: datetime,
            dispatch: Dispatch) -> str | None:
    """After an answer: ``"phase"`` (the next phase started), ``"completed"``
    (an erasure), ``"assemble"`` (an export whose parts are all in) or None."""
    if request.status not in ("in_progress", "failed") or request.user_id is None:
        return None
    parts = parts_of(db, request.id)
    current = _phase_parts(request, parts, request.phase)
    if not current or any(p.status != "completed" for p in current):
        return None
    # the next phase; after an erasure's last one, generation once more (a job
    # submitted while the erasure ran is erased before the certificate)
    more = (request.phase < RECHECK_PHASE if request.type == "erasure"
            else any(p.phase > request.phase for p in parts))
    if more:
        _start_phase(db, request, request.phase + 1, now, dispatch)
        return "phase"
    if request.type == "erasure":
        complete_erasure(db, settings, request, now)
        return "completed"
    if request.export_object_id is None:
        if request.status == "failed" and request.assembly_attempts < settings.assembly_max_attempts:
            request.status = "in_progress"  # a late part: the archive can be built now
        return "assemble"
    return None


def complete_erasure(db: Session, settings: PrivacySettings, request: PrivacyRequest,
                     now: datetime) -> None:
    """Every part confirmed: remove the user id from every request of the
    user, remember the user (as a keyed hash) so late access logs are
    dropped, and delete what reached this service since its own part ran."""
    user_id = request.user_id
    late = own_data.erase(db, user_id)
    if any(late.values()):
        mine = db.get(RequestPart, (request.id, "privacy"))
        if mine is not None and mine.status == "completed":
            tables = dict(mine.tables or {})
            for name, count in late.items():
                tables[name] = tables.get(name, 0) + count
            mine.tables = tables
            mine.rows_deleted = (mine.rows_deleted or 0) + sum(late.values())
    forget_erased(db, settings.pseudonym_key, user_id, now, keep=request.id)
    request.status, request.completed_at = "completed", now
    log(db, request.id, "completed", now)


def forget_erased(db: Session, pseudonym_key: bytes, user_id, now: datetime,
                  keep: uuid.UUID | None = None) -> None:
    """The privacy service's last step of an erasure (also replayed after a
    restore, ops/backups/erasures.py): remember the user as a keyed hash,
    cancel their other open requests, and remove the user id from every
    request of theirs (``keep``: the erasure's own, completed by the caller).
    The caller commits."""
    subject = pseudonym(pseudonym_key, user_id)
    if db.get(ErasedSubject, subject) is None:
        db.add(ErasedSubject(subject=subject, erased_at=now))
    for other in db.scalars(select(PrivacyRequest).where(PrivacyRequest.user_id == user_id)):
        if other.id != keep and other.status in OPEN_STATUSES:
            other.status, other.cancelled_at = "cancelled", now
            log(db, other.id, "cancelled", now, detail="the account was erased")
        other.user_id, other.open_type, other.updated_at = None, None, now


# ---------------------------------------------------------------- exports


def claim_assembly(db: Session, settings: PrivacySettings, request_id, now: datetime
                   ) -> PrivacyRequest | None:
    """Take the right to build an export's archive for a while (the caller
    commits before building); None when it is not buildable or taken."""
    request = locked(db, PrivacyRequest, client_id(request_id, "request"))
    if (request is None or request.type != "export" or request.status != "in_progress"
            or request.user_id is None or request.export_object_id is not None
            or request.assembly_attempts >= settings.assembly_max_attempts
            or (request.assembling_until is not None and request.assembling_until > now)):
        return None
    if any(p.status != "completed" for p in parts_of(db, request.id)):
        return None
    request.assembling_until = now + settings.assembly_lease
    request.assembly_attempts += 1
    request.updated_at = now
    return request


def finish_export(db: Session, request: PrivacyRequest, stored: dict, now: datetime,
                  dispatch: Dispatch) -> list[uuid.UUID]:
    """The archive is stored: complete the request, forget the parts' data,
    announce it. Returns the parts' stored objects, to delete."""
    request.export_object_id = trusted_id(stored["id"], "id")
    request.export_size = int(stored["size"])
    expires = stored.get("expires_at")
    request.export_expires_at = datetime.fromisoformat(expires.replace("Z", "+00:00")) \
        if isinstance(expires, str) else expires
    request.status, request.completed_at, request.open_type = "completed", now, None
    request.assembling_until, request.last_error, request.updated_at = None, None, now
    stored_parts = []
    for part in parts_of(db, request.id):
        if part.object_id is not None:
            stored_parts.append(part.object_id)
        part.data, part.object_id = None, None
    dispatch("export_ready", {"request_id": str(request.id), "user_id": str(request.user_id),
                              "expires_at": stored.get("expires_at")})
    log(db, request.id, "completed", now, detail=f"archive of {request.export_size} bytes")
    return stored_parts


def assembly_failed(db: Session, settings: PrivacySettings, request_id, error: str,
                    now: datetime) -> PrivacyRequest | None:
    request = locked(db, PrivacyRequest, client_id(request_id, "request"))
    if request is None or request.status != "in_progress":
        return None
    # the next try waits a while (30 s, 1 min, 2 min...): storage may be restarting
    backoff = ASSEMBLY_BACKOFF * 2 ** max(request.assembly_attempts - 1, 0)
    request.last_error, request.assembling_until = error[:500], now + backoff
    request.updated_at = now
    log(db, request.id, "assembly_failed", now, detail=error)
    if request.assembly_attempts >= settings.assembly_max_attempts:
        request.status, request.failed_at = "failed", now
        log(db, request.id, "failed", now, detail="the archive could not be built")
    return request


def buildable_exports(db: Session, settings: PrivacySettings, now: datetime,
                      limit: int = 10) -> list[uuid.UUID]:
    """Exports whose parts are all in and whose archive is not built (or
    whose builder stopped): the timer builds them."""
    candidates = db.scalars(
        select(PrivacyRequest).where(
            PrivacyRequest.type == "export", PrivacyRequest.status == "in_progress",
            PrivacyRequest.export_object_id.is_(None), PrivacyRequest.user_id.is_not(None),
            PrivacyRequest.assembly_attempts < settings.assembly_max_attempts,
        ).order_by(PrivacyRequest.due_at).limit(limit * 5)
    ).all()
    ready = []
    for request in candidates:
        if request.assembling_until is not None and request.assembling_until > now:
            continue
        if all(p.status == "completed" for p in parts_of(db, request.id)):
            ready.append(request.id)
        if len(ready) >= limit:
            break
    return ready


# ---------------------------------------------------------------- the timer


def grace_over(db: Session, now: datetime, limit: int = 100) -> list[uuid.UUID]:
    """Erasures whose grace period is over and whose account's credentials
    are not revoked yet: the service revokes them (:func:`claim_revocation`)."""
    return list(db.scalars(
        select(PrivacyRequest.id).where(PrivacyRequest.status == "pending",
                                        PrivacyRequest.type == "erasure",
                                        PrivacyRequest.revoked_at.is_(None),
                                        PrivacyRequest.starts_at <= now)
        .order_by(PrivacyRequest.starts_at).limit(limit)))


def claim_revocation(db: Session, request_id, now: datetime) -> PrivacyRequest | None:
    """Lock an erasure whose grace is over for the revocation of its
    account's credentials (a cancellation waits for the lock and then finds
    it no longer cancellable); None when it is not due or taken."""
    request = db.scalar(select(PrivacyRequest).where(
        PrivacyRequest.id == client_id(request_id, "request"), PrivacyRequest.status == "pending",
        PrivacyRequest.revoked_at.is_(None), PrivacyRequest.starts_at <= now,
    ).with_for_update(skip_locked=True))
    return request


def credentials_revoked(db: Session, request: PrivacyRequest, now: datetime,
                        detail: str | None = None) -> None:
    """Auth revoked every credential: no cancelling any more; the erasure
    starts the settle time later (:func:`tick`). The caller commits."""
    request.revoked_at, request.cancel_token_hash, request.updated_at = now, None, now
    log(db, request.id, "credentials_revoked", now, detail=detail)


def tick(db: Session, settings: PrivacySettings, now: datetime, dispatch: Dispatch) -> dict:
    """Start erasures whose credentials were revoked the settle time ago;
    ask again for parts that did not answer in time (or fail them past the
    bound); move on requests whose phase is complete (should an answer's own
    advance have been lost). The caller commits."""
    started = 0
    for request in db.scalars(
        select(PrivacyRequest).where(PrivacyRequest.status == "pending",
                                     PrivacyRequest.revoked_at <= now - settings.erasure_settle)
        .order_by(PrivacyRequest.revoked_at).limit(100).with_for_update(skip_locked=True)
    ):
        start(db, request, now, dispatch)
        started += 1

    republished = failed = 0
    stale = db.execute(
        select(RequestPart, PrivacyRequest)
        .join(PrivacyRequest, PrivacyRequest.id == RequestPart.request_id)
        .where(RequestPart.status == "pending",
               RequestPart.published_at <= now - settings.part_timeout,
               PrivacyRequest.status.in_(("in_progress", "failed")),
               PrivacyRequest.user_id.is_not(None))
        .limit(500).with_for_update(of=RequestPart, skip_locked=True)
    ).all()
    by_request: dict[uuid.UUID, tuple[PrivacyRequest, list[RequestPart]]] = {}
    for part, request in stale:
        by_request.setdefault(request.id, (request, []))[1].append(part)
    for request, parts in by_request.values():
        again = [p for p in parts if p.attempts < settings.part_max_attempts]
        for part in parts:
            if part.attempts >= settings.part_max_attempts:
                part.status = "failed"
                failed += 1
                log(db, request.id, "part_failed", now, service=part.service,
                    detail=f"no answer after {part.attempts} requests")
        for part in again:
            part.attempts += 1
            part.published_at = now
            republished += 1
            log(db, request.id, "part_requested_again", now, service=part.service,
                detail=f"attempt {part.attempts}")
        if again:
            _publish(request, [p.service for p in again], dispatch)
        if len(again) < len(parts) and request.status != "failed":
            request.status, request.failed_at, request.updated_at = "failed", now, now
            log(db, request.id, "failed", now, detail="a part never answered")

    moved = 0
    for request in db.scalars(select(PrivacyRequest).where(
            PrivacyRequest.status == "in_progress", PrivacyRequest.type == "erasure",
            PrivacyRequest.updated_at <= now - settings.part_timeout / 4).limit(100)):
        if advance(db, settings, request, now, dispatch) in ("phase", "completed"):
            moved += 1
    return {"started": started, "republished": republished, "failed": failed, "moved": moved}


def retry(db: Session, settings: PrivacySettings, request_id, now: datetime,
          dispatch: Dispatch) -> dict:
    """An operator's retry of an open request: its unanswered parts of the
    current phase are asked again with a fresh budget, a failed archive is
    built again. 404 unknown, 409 ``not_open``."""
    request = locked(db, PrivacyRequest, client_id(request_id, "request"))
    if request is None:
        raise not_found("request")
    if request.status not in ("in_progress", "failed") or request.user_id is None:
        raise conflict(f"the request is {request.status}: nothing to retry", code="not_open")
    asked = [p for p in _phase_parts(request, parts_of(db, request.id), request.phase)
             if p.status in ("pending", "failed")]
    for part in asked:
        part.status, part.attempts, part.published_at = "pending", 1, now
    if asked:
        _publish(request, [p.service for p in asked], dispatch)
    request.status, request.failed_at, request.updated_at = "in_progress", None, now
    request.assembly_attempts, request.assembling_until = 0, None
    log(db, request.id, "retried", now, detail=", ".join(p.service for p in asked) or "archive")
    return {"request_id": str(request.id), "asked_again": [p.service for p in asked]}


# ---------------------------------------------------------------- reading


def get_for_user(db: Session, user_id: uuid.UUID, request_id) -> PrivacyRequest:
    """The user's request; another user's is not found, like an unknown one."""
    request = db.get(PrivacyRequest, client_id(request_id, "request"))
    if request is None or request.user_id is None or request.user_id != user_id:
        raise not_found("request")
    return request


def list_for_user(db: Session, user_id: uuid.UUID, query: dict
                  ) -> tuple[list[PrivacyRequest], str | None]:
    stmt = select(PrivacyRequest).where(PrivacyRequest.user_id == user_id)
    return paginate(db, stmt, PrivacyRequest.created_at, PrivacyRequest.id, query["limit"],
                    query["cursor"])


def cancel(db: Session, user_id: uuid.UUID, request_id, now: datetime, dispatch: Dispatch,
           credential_type: str | None = "session") -> PrivacyRequest:
    """The owner cancels an erasure in its grace period, signed in with a
    session (403 ``session_required`` with an API key); 409
    ``not_cancellable`` once the grace period is over."""
    request = get_for_user(db, user_id, request_id)
    if credential_type != "session":
        raise session_required()
    # locked and read again: the timer may be revoking the credentials right now
    fresh = locked(db, PrivacyRequest, request.id)
    return _cancel(db, fresh, now, dispatch, "by the user")


def cancel_with_token(db: Session, request_id, token: str, now: datetime,
                      dispatch: Dispatch) -> PrivacyRequest:
    """The mailed cancel link, without signing in: 400 ``invalid_token``
    for a wrong, used or expired token and for an unknown request (one
    answer for all, so the link tells a stranger nothing)."""
    try:
        request = locked(db, PrivacyRequest, client_id(request_id, "request"))
    except DomainError:
        request = None
    # the token is forgotten once used or once the grace period is over
    if (request is None or request.type != "erasure" or request.cancel_token_hash is None
            or not hmac.compare_digest(request.cancel_token_hash, token_hash(token or ""))):
        raise invalid_link()
    return _cancel(db, request, now, dispatch, "with the mailed link")


def invalid_link() -> DomainError:
    return DomainError("invalid_token", "the cancel link is not valid, was used already, or "
                       "the grace period is over", 400)


def not_cancellable(request: PrivacyRequest) -> DomainError:
    return conflict("only an erasure in its grace period can be cancelled",
                    code="not_cancellable", status=request.status)


def _cancel(db: Session, request: PrivacyRequest, now: datetime, dispatch: Dispatch,
            by: str) -> PrivacyRequest:
    if request.type != "erasure" or request.status != "pending" or request.revoked_at is not None:
        raise not_cancellable(request)
    request.status, request.cancelled_at, request.open_type = "cancelled", now, None
    request.cancel_token_hash, request.updated_at = None, now
    dispatch("erasure_cancelled", {"request_id": str(request.id), "user_id": str(request.user_id)})
    log(db, request.id, "cancelled", now, detail=by)
    return request


def is_overdue(request: PrivacyRequest, now: datetime) -> bool:
    return request.status in OPEN_STATUSES and now > request.due_at


def state_metrics(engine, now: datetime) -> list[metrics.Sample]:
    """Open requests by type and how soon they are due (``overdue`` as
    :func:`is_overdue` says), read at each scrape (services.common.metrics)."""
    counts = {(t, d): 0 for t in REQUEST_TYPES for d in ("overdue", "due_7d", "later")}
    with Session(engine) as db:
        rows = db.scalars(select(PrivacyRequest)
                          .where(PrivacyRequest.status.in_(OPEN_STATUSES))).all()
    for request in rows:
        due_at = aware(request.due_at)
        when = ("overdue" if now > due_at else
                "due_7d" if due_at - now <= timedelta(days=7) else "later")
        counts[(request.type, when)] = counts.get((request.type, when), 0) + 1
    return [("darkroom_privacy_requests", {"type": t, "due": d}, float(n))
            for (t, d), n in counts.items()]


def part_overdue(settings: PrivacySettings, part: RequestPart, now: datetime) -> bool:
    return part.status == "failed" or (
        part.status == "pending" and part.published_at is not None
        and now > part.published_at + settings.part_timeout)


def view(settings: PrivacySettings, request: PrivacyRequest, parts: list[RequestPart],
         now: datetime, download: dict | None = None) -> dict:
    """The request as ``RequestView`` dumps it; ``download`` is storage's
    answer for a finished export's archive (None when it is gone)."""
    certificate = (f"/v1/privacy/certificates/{request.id}"
                   if request.type == "erasure" and request.status == "completed" else None)
    return {
        "id": request.id, "type": request.type, "status": request.status,
        "created_at": request.created_at, "due_at": request.due_at,
        "overdue": is_overdue(request, now), "starts_at": request.starts_at,
        "completed_at": request.completed_at, "cancelled_at": request.cancelled_at,
        "parts": [{"service": p.service, "status": p.status, "completed_at": p.completed_at,
                   "overdue": part_overdue(settings, p, now)} for p in parts],
        "download_url": download.get("url") if download else None,
        "download_expires_at": request.export_expires_at if download else None,
        "certificate_url": certificate,
    }


def certificate(db: Session, request_id) -> dict:
    """A completed erasure's certificate: per-service counts and times, no
    personal data. 404 for anything else."""
    request = db.get(PrivacyRequest, client_id(request_id, "request"))
    if request is None or request.type != "erasure" or request.status != "completed":
        raise not_found("certificate")
    services = []
    totals: dict[str, int] = defaultdict(int)
    for part in parts_of(db, request.id):
        entry = {
            "service": part.service, "rows_deleted": part.rows_deleted or 0,
            "rows_pseudonymised": part.rows_pseudonymised or 0,
            "objects_deleted": part.objects_deleted or 0, "bytes_deleted": part.bytes_deleted or 0,
            "tables": dict(part.tables or {}), "started_at": part.started_at,
            "finished_at": part.finished_at, "confirmed_at": part.completed_at,
        }
        for key in ("rows_deleted", "rows_pseudonymised", "objects_deleted", "bytes_deleted"):
            totals[key] += entry[key]
        services.append(entry)
    return {"request_id": request.id, "requested_at": request.created_at,
            "started_at": request.started_at, "completed_at": request.completed_at,
            "services": services, "totals": dict(totals)}


def by_urgency(rows, now: datetime) -> list[PrivacyRequest]:
    """Overdue requests first, then by due date."""
    return sorted(rows, key=lambda r: (not is_overdue(r, now), r.due_at))


def for_operators(db: Session, now: datetime, open_only: bool = True,
                  limit: int = 500) -> list[dict]:
    """``GET /v1/admin/privacy-requests``: the open requests (every request
    with ``open_only`` False), overdue ones first then by due date, with
    whose they are."""
    stmt = select(PrivacyRequest)
    if open_only:
        stmt = stmt.where(PrivacyRequest.status.in_(OPEN_STATUSES))
    rows = db.scalars(stmt.order_by(PrivacyRequest.due_at).limit(limit)).all()
    return [{"id": str(r.id), "user_id": r.user_id and str(r.user_id), "kind": r.type,
             "status": r.status, "created_at": r.created_at, "due_at": r.due_at, "overdue": is_overdue(r, now),
             "completed_at": r.completed_at} for r in by_urgency(rows, now)]


def report(db: Session, settings: PrivacySettings, now: datetime, limit: int = 500) -> dict:
    """For ``darkroom-ops privacy report``: open requests, overdue ones
    first then by due date, with their unanswered parts; and every failed
    part. Request ids only: no user ids."""
    rows = db.scalars(select(PrivacyRequest).where(PrivacyRequest.status.in_(OPEN_STATUSES))
                      .order_by(PrivacyRequest.due_at).limit(limit)).all()
    open_requests = []
    for request in by_urgency(rows, now):
        waiting = [p for p in parts_of(db, request.id) if p.status != "completed"]
        open_requests.append({
            "id": str(request.id), "type": request.type, "status": request.status,
            "created_at": request.created_at, "due_at": request.due_at,
            "overdue": is_overdue(request, now), "phase": request.phase,
            "last_error": request.last_error,
            "parts": [{"service": p.service, "status": p.status, "attempts": p.attempts,
                       "asked_at": p.published_at, "overdue": part_overdue(settings, p, now)}
                      for p in waiting],
        })
    failed = db.execute(
        select(RequestPart.request_id, RequestPart.service, RequestPart.attempts,
               RequestPart.published_at)
        .join(PrivacyRequest, and_(PrivacyRequest.id == RequestPart.request_id))
        .where(RequestPart.status == "failed", PrivacyRequest.status.in_(OPEN_STATUSES))
        .order_by(RequestPart.published_at)
    ).all()
    return {
        "generated_at": now,
        "open": open_requests,
        "failed_parts": [{"request_id": str(r.request_id), "service": r.service,
                          "attempts": r.attempts, "asked_at": r.published_at} for r in failed],
    }
