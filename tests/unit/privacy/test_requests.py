"""Data-subject requests on SQLite: creation and the one-open-request rule,
the phases of an erasure, answers recorded once, completion and its
scrubbing, cancellation, the timer's re-asking and failing, retries, the
view, the certificate and the operators' report."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.common import contracts
from services.common import privacy_parts as parts
from services.common.contracts.privacy import PART_SERVICES
from services.common.errors import DomainError
from services.common.ids import pseudonym
from services.common.sealed import Sealer, UnreadableSecret
from services.privacy import access_logs, consent, own_data
from services.privacy import requests as subject_requests
from services.privacy.models import (
    ConsentChange,
    ErasedSubject,
    PrivacyRequest,
    RequestLog,
    RequestPart,
)
from tests.unit.privacy.conftest import NOW, cancel_token, privacy_settings

OTHERS = [s for s in PART_SERVICES if s != "generation"]


def export_answer(request_id, service: str, data: dict | None = None) -> dict:
    payload = parts.export_part(request_id, service, data or {"service": service}, f"{service} data",
                                [{"what": "secrets", "why": "they are secret"}])
    if service == "privacy":
        return payload
    return contracts.load_event(f"{service}.export_part_ready",
                                contracts.make_event(f"{service}.export_part_ready", payload))


def erasure_answer(request_id, service: str, recheck: bool = False, **tables) -> dict:
    payload = parts.erasure_result(request_id, service, NOW, NOW + timedelta(seconds=1),
                                   tables or {"rows": 2}, objects_deleted=1, bytes_deleted=10,
                                   recheck=recheck)
    return contracts.load_event(f"{service}.erasure_completed",
                                contracts.make_event(f"{service}.erasure_completed", payload))


def create(db, settings, events, user, kind="export", now=NOW):
    request = subject_requests.create(db, settings, user, kind, now, events)
    db.commit()
    return request


def begin_erasure(db, settings, events, user, now=NOW):
    """An erasure past its grace period, credentials revoked, started."""
    request = create(db, settings, events, user, "erasure", now)
    later = request.starts_at
    claimed = subject_requests.claim_revocation(db, request.id, later)
    subject_requests.credentials_revoked(db, claimed, later)
    assert subject_requests.tick(db, settings, later + settings.erasure_settle,
                                 events)["started"] == 1
    db.commit()
    return request


def statuses(db, request_id) -> dict[str, str]:
    return {p.service: p.status for p in subject_requests.parts_of(db, request_id)}


def refused(fn, *args) -> DomainError:
    with pytest.raises(DomainError) as info:
        fn(*args)
    return info.value


# ---------------------------------------------------------------- creating


def test_an_export_asks_every_service_at_once(db, settings, events, user):
    request = create(db, settings, events, user)
    assert request.status == "in_progress" and request.due_at == NOW + timedelta(days=30)
    (asked,) = events.of("export_requested")
    assert asked["user_id"] == str(user) and asked["request_id"] == str(request.id)
    assert asked["services"] == list(PART_SERVICES)
    assert set(statuses(db, request.id).values()) == {"pending"}


def test_an_erasure_without_grace_starts_now_with_no_cancel_link(db, settings, events, user):
    """users delete-minor: the timer finds it due at once; nothing to cancel."""
    request = subject_requests.create(db, settings, user, "erasure", NOW, events, grace=False)
    db.commit()
    assert request.starts_at == NOW and request.cancel_token_hash is None
    assert events.of("erasure_scheduled") == [] and events.of("erasure_started") == []
    assert subject_requests.grace_over(db, NOW) == [request.id]


def test_an_erasure_in_its_grace_can_be_made_to_start_now(db, settings, events, user):
    request = create(db, settings, events, user, "erasure")
    assert subject_requests.grace_over(db, NOW) == []
    hastened = subject_requests.without_grace(db, request.id, NOW)
    db.commit()
    assert hastened.starts_at == NOW and hastened.cancel_token_hash is None
    assert subject_requests.grace_over(db, NOW) == [request.id]
    claimed = subject_requests.claim_revocation(db, request.id, NOW)
    subject_requests.credentials_revoked(db, claimed, NOW)
    db.commit()
    assert subject_requests.without_grace(db, request.id, NOW) is None  # past its grace


def test_one_open_request_of_each_type_per_user(db, settings, events, user):
    first = create(db, settings, events, user)
    error = refused(subject_requests.create, db, settings, user, "export", NOW, events)
    assert (error.status, error.code, error.details["request_id"]) == (409, "conflict", str(first.id))
    create(db, settings, events, user, "erasure")  # another type is fine
    create(db, settings, events, uuid.uuid4())  # and another user
    # the database refuses a second open one too (two requests at the same moment)
    db.add(PrivacyRequest(id=uuid.uuid4(), user_id=user, type="export", status="pending",
                          open_type="export", phase=0, created_at=NOW, due_at=NOW, updated_at=NOW,
                          assembly_attempts=0))
    with pytest.raises(IntegrityError):
        db.flush()


def test_restriction_takes_effect_at_once_and_is_refused_twice(db, settings, events, user):
    request = create(db, settings, events, user, "restriction")
    assert request.status == "completed" and own_data.is_restricted(db, user)
    assert [e["restricted"] for e in events.of("restriction_changed")] == [True]
    assert refused(subject_requests.create, db, settings, user, "restriction", NOW,
                   events).code == "already_restricted"
    create(db, settings, events, user, "lift_restriction")
    assert not own_data.is_restricted(db, user)
    assert [e["restricted"] for e in events.of("restriction_changed")] == [True, False]
    error = refused(subject_requests.create, db, settings, user, "lift_restriction", NOW, events)
    assert (error.status, error.code) == (409, "not_restricted")


# ---------------------------------------------------------------- answers


def test_an_export_is_ready_to_assemble_when_every_part_answered_once(db, settings, events, user):
    request = create(db, settings, events, user)
    for service in PART_SERVICES[:-1]:
        recorded = subject_requests.record_export_part(db, export_answer(request.id, service), NOW)
        assert subject_requests.advance(db, settings, recorded, NOW, events) is None
    # a second answer of a service changes nothing
    again = export_answer(request.id, "auth", {"other": True})
    assert subject_requests.record_export_part(db, again, NOW) is None
    last = subject_requests.record_export_part(db, export_answer(request.id, "privacy"), NOW)
    assert subject_requests.advance(db, settings, last, NOW, events) == "assemble"
    db.commit()
    auth = db.get(RequestPart, (request.id, "auth"))
    assert json.loads(auth.data) == {"service": "auth"}
    assert auth.withheld == [{"what": "secrets", "why": "they are secret"}]
    # an answer for an unknown request is ignored
    assert subject_requests.record_export_part(db, export_answer(uuid.uuid4(), "auth"), NOW) is None


def test_an_erasure_waits_its_grace_then_revokes_then_settles_then_erases_generation_first(
        db, events, user):
    settings = privacy_settings(PSEUDONYM_KEY="k")
    request = create(db, settings, events, user, "erasure")
    # 72 hours of grace by default, the due date still 30 days from the request
    assert (request.status, request.starts_at) == ("pending", NOW + timedelta(hours=72))
    assert request.due_at == NOW + timedelta(days=30)
    (scheduled,) = events.of("erasure_scheduled")
    assert scheduled["user_id"] == str(user) and len(cancel_token(scheduled)) >= 32
    assert request.cancel_token_hash == subject_requests.token_hash(cancel_token(scheduled))
    assert events.of("erasure_requested") == []
    # nothing to revoke or start before the grace is over
    before = NOW + timedelta(hours=72) - timedelta(seconds=1)
    assert subject_requests.grace_over(db, before) == []
    assert subject_requests.claim_revocation(db, request.id, before) is None
    assert subject_requests.tick(db, settings, NOW + timedelta(days=29), events)["started"] == 0
    over = NOW + timedelta(hours=72)
    assert subject_requests.grace_over(db, over) == [request.id]
    subject_requests.credentials_revoked(db, subject_requests.claim_revocation(db, request.id, over),
                                         over)
    db.commit()
    assert subject_requests.grace_over(db, over) == []
    assert db.get(PrivacyRequest, request.id).cancel_token_hash is None  # the link is dead
    settle = settings.erasure_settle
    assert subject_requests.tick(db, settings, over + settle - timedelta(seconds=1),
                                 events)["started"] == 0
    assert subject_requests.tick(db, settings, over + settle, events)["started"] == 1
    db.commit()
    (first,) = events.of("erasure_requested")
    assert first["services"] == ["generation"]
    assert set(statuses(db, request.id).items()) == {("generation", "pending")} | {
        (s, "waiting") for s in OTHERS}
    # an answer of a service not asked yet is not taken
    assert subject_requests.record_erasure_part(db, erasure_answer(request.id, "auth"), NOW) is None
    found = subject_requests.record_erasure_part(db, erasure_answer(request.id, "generation"), NOW)
    assert subject_requests.advance(db, settings, found, NOW, events) == "phase"
    assert events.of("erasure_requested")[1]["services"] == OTHERS


def test_generation_is_asked_again_before_the_certificate_and_its_counts_add_up(
        db, settings, events, user):
    request = begin_erasure(db, settings, events, user)
    found = subject_requests.record_erasure_part(db, erasure_answer(request.id, "generation",
                                                                    jobs=2), NOW)
    assert subject_requests.advance(db, settings, found, NOW, events) == "phase"
    for service in OTHERS:
        answer = erasure_answer(request.id, service) if service != "privacy" else {
            **parts.erasure_result(request.id, "privacy", NOW, NOW, {"rows": 2}),
            "started_at": NOW, "finished_at": NOW}
        found = subject_requests.record_erasure_part(db, answer, NOW)
        outcome = subject_requests.advance(db, settings, found, NOW, events)
    # every part in, but no certificate yet: generation is asked once more
    assert outcome == "phase"
    db.commit()
    recheck = events.of("erasure_requested")[-1]
    assert (recheck["services"], recheck["recheck"]) == (["generation"], True)
    assert db.get(PrivacyRequest, request.id).status == "in_progress"
    assert refused(subject_requests.certificate, db, request.id).status == 404
    # a late copy of generation's first answer is not taken for the second one
    late = erasure_answer(request.id, "generation", jobs=2)
    assert subject_requests.record_erasure_part(db, late, NOW) is None
    # a job submitted meanwhile was erased by the recheck: its counts are added
    again = erasure_answer(request.id, "generation", recheck=True, jobs=1)
    found = subject_requests.record_erasure_part(db, again, NOW)
    assert subject_requests.advance(db, settings, found, NOW, events) == "completed"
    db.commit()
    generation = [s for s in subject_requests.certificate(db, request.id)["services"]
                  if s["service"] == "generation"][0]
    assert (generation["tables"], generation["rows_deleted"]) == ({"jobs": 3}, 3)
    assert generation["bytes_deleted"] == 20
    assert generation["objects_deleted"] == 2


def test_a_completed_erasure_leaves_no_user_id_behind(db, settings, events, user):
    consent.update(db, user, {"marketing_email": True}, "api", NOW)
    access_logs.store(db, settings.pseudonym_key, {
        "id": uuid.uuid4(), "user_id": user, "at": NOW, "method": "GET", "route": "/v1/me",
        "status": 200, "network": "10.0.0.0/24"})
    export = create(db, settings, events, user)
    erasure = begin_erasure(db, settings, events, user)
    outcome = None
    for service in ["generation", *OTHERS, "generation"]:
        if service == "privacy":
            tables = own_data.erase(db, user)
            answer = {**parts.erasure_result(erasure.id, "privacy", NOW, NOW, tables),
                      "started_at": NOW, "finished_at": NOW}
        else:
            answer = erasure_answer(erasure.id, service, recheck=outcome == "phase"
                                    and service == "generation" and erasure.phase == 3)
        found = subject_requests.record_erasure_part(db, answer, NOW)
        outcome = subject_requests.advance(db, settings, found, NOW, events)
    assert outcome == "completed"
    db.commit()
    assert db.scalars(select(PrivacyRequest).where(PrivacyRequest.user_id == user)).all() == []
    assert db.get(PrivacyRequest, erasure.id).status == "completed"
    cancelled = db.get(PrivacyRequest, export.id)
    assert (cancelled.status, cancelled.user_id) == ("cancelled", None)
    assert db.scalars(select(ConsentChange)).all() == []
    assert db.get(ErasedSubject, pseudonym(settings.pseudonym_key, user)) is not None
    # the audit trail stays, without the id
    assert str(user) not in " ".join(r.detail or "" for r in db.scalars(select(RequestLog)))
    certificate = subject_requests.certificate(db, erasure.id)
    assert certificate["totals"] == {"rows_deleted": 2 * 6 + 2, "rows_pseudonymised": 0,
                                     "objects_deleted": 6, "bytes_deleted": 60}
    privacy = [s for s in certificate["services"] if s["service"] == "privacy"][0]
    assert privacy["tables"] == {"consent_changes": 1, "region_refusals": 0,
                                 "policy_acceptances": 0, "restrictions": 0, "access_logs": 1}
    assert str(user) not in json.dumps(certificate, default=str)
    # the user can ask for nothing more (they are gone); a new account could
    assert subject_requests.list_for_user(db, user, {"limit": 20, "cursor": None}) == ([], None)


def test_the_certificate_exists_only_for_a_completed_erasure(db, settings, events, user):
    export = create(db, settings, events, user)
    erasure = create(db, settings, events, user, "erasure")
    for request_id in (export.id, erasure.id, uuid.uuid4(), "not-an-id"):
        assert refused(subject_requests.certificate, db, request_id).status == 404


# ---------------------------------------------------------------- cancelling


def test_only_an_erasure_in_its_grace_period_can_be_cancelled(db, events, user):
    settings = privacy_settings(PSEUDONYM_KEY="k", ERASURE_GRACE_HOURS=1)
    erasure = create(db, settings, events, user, "erasure")
    assert refused(subject_requests.cancel, db, uuid.uuid4(), erasure.id, NOW,
                   events).status == 404
    error = refused(subject_requests.cancel, db, user, erasure.id, NOW, events, "api_key")
    assert (error.status, error.code) == (403, "session_required")
    cancelled = subject_requests.cancel(db, user, erasure.id, NOW, events, "session")
    db.commit()
    assert (cancelled.status, cancelled.open_type) == ("cancelled", None)
    (event,) = events.of("erasure_cancelled")
    assert (event["request_id"], event["user_id"]) == (str(erasure.id), str(user))
    assert subject_requests.grace_over(db, NOW + timedelta(days=1)) == []
    assert subject_requests.tick(db, settings, NOW + timedelta(days=1), events)["started"] == 0
    assert events.of("erasure_requested") == []
    export = create(db, settings, events, user)
    error = refused(subject_requests.cancel, db, user, export.id, NOW, events)
    assert (error.status, error.code) == (409, "not_cancellable")
    # once the grace is over (credentials revoked) it is too late
    started = begin_erasure(db, settings, events, user)
    assert refused(subject_requests.cancel, db, user, started.id, NOW,
                   events).code == "not_cancellable"


def test_the_mailed_link_cancels_once_without_signing_in(db, settings, events, user):
    erasure = create(db, settings, events, user, "erasure")
    token = cancel_token(events.of("erasure_scheduled")[0])
    for request_id, wrong in ((erasure.id, token[:-1] + ("A" if token[-1] != "A" else "B")),
                              (erasure.id, ""), (uuid.uuid4(), token), ("not-an-id", token)):
        error = refused(subject_requests.cancel_with_token, db, request_id, wrong, NOW, events)
        assert (error.status, error.code) == (400, "invalid_token")
    cancelled = subject_requests.cancel_with_token(db, erasure.id, token, NOW, events)
    db.commit()
    assert cancelled.status == "cancelled" and len(events.of("erasure_cancelled")) == 1
    # single use
    assert refused(subject_requests.cancel_with_token, db, erasure.id, token, NOW,
                   events).code == "invalid_token"
    # and dead once the grace period is over
    other = begin_erasure(db, settings, events, user)
    token = cancel_token(events.of("erasure_scheduled")[-1])
    assert refused(subject_requests.cancel_with_token, db, other.id, token, NOW,
                   events).code == "invalid_token"
    assert db.get(PrivacyRequest, other.id).status == "in_progress"


def test_the_scheduled_event_carries_the_cancel_token_only_sealed(db, settings, events, user):
    erasure = create(db, settings, events, user, "erasure")
    (event,) = events.of("erasure_scheduled")
    token = cancel_token(event)  # opens with MAIL_SECRETS_KEY...
    assert "cancel_token" not in event
    assert token not in json.dumps(event)  # ...and is nowhere in clear
    with pytest.raises(UnreadableSecret):  # nor opens under another key
        Sealer("not-the-mail-secrets-key").open(event["sealed_cancel_token"])
    assert subject_requests.cancel_with_token(db, erasure.id, token, NOW,
                                              events).status == "cancelled"


def test_an_erasure_needs_a_session_and_the_password(db, settings, events, user):
    error = refused(subject_requests.check_erasure_caller, "api_key", "pw")
    assert (error.status, error.code) == (403, "session_required")
    for password in (None, ""):
        error = refused(subject_requests.check_erasure_caller, "session", password)
        assert (error.status, error.code) == (401, "reauthentication_required")
    subject_requests.check_erasure_caller("session", "pw")  # auth checks the password itself


# ---------------------------------------------------------------- the timer


def test_late_parts_are_asked_again_then_failed_then_retried(db, settings, events, user):
    request = create(db, settings, events, user)
    timeout = settings.part_timeout
    for service in ("auth", "billing", "generation", "privacy"):
        subject_requests.record_export_part(db, export_answer(request.id, service), NOW)
    db.commit()
    events.clear()
    assert subject_requests.tick(db, settings, NOW + timeout - timedelta(seconds=1),
                                 events)["republished"] == 0
    assert subject_requests.tick(db, settings, NOW + timeout, events)["republished"] == 2
    db.commit()
    assert events.of("export_requested")[-1]["services"] == ["notifications", "storage"]
    subject_requests.record_export_part(db, export_answer(request.id, "storage"), NOW + timeout)
    later = NOW + 2 * timeout
    assert subject_requests.tick(db, settings, later, events)["republished"] == 1  # attempt 3
    db.commit()
    result = subject_requests.tick(db, settings, NOW + 3 * timeout, events)
    db.commit()
    assert (result["republished"], result["failed"]) == (0, 1)
    assert db.get(PrivacyRequest, request.id).status == "failed"
    report = subject_requests.report(db, settings, NOW + 3 * timeout)
    assert report["failed_parts"][0]["service"] == "notifications"
    assert [p["service"] for p in report["open"][0]["parts"]] == ["notifications"]
    # an operator's retry asks again with a fresh budget
    events.clear()
    retried = subject_requests.retry(db, settings, request.id, NOW + 3 * timeout, events)
    assert retried["asked_again"] == ["notifications"]
    assert events.of("export_requested")[0]["services"] == ["notifications"]
    assert db.get(PrivacyRequest, request.id).status == "in_progress"
    found = subject_requests.record_export_part(db, export_answer(request.id, "notifications"), NOW)
    assert subject_requests.advance(db, settings, found, NOW, events) == "assemble"
    assert refused(subject_requests.retry, db, settings, uuid.uuid4(), NOW, events).status == 404


def test_a_late_answer_still_completes_a_failed_part(db, settings, events, user):
    request = create(db, settings, events, user)
    for service in PART_SERVICES[1:]:
        subject_requests.record_export_part(db, export_answer(request.id, service), NOW)
    for hours in range(1, 5):
        subject_requests.tick(db, settings, NOW + timedelta(hours=hours), events)
        db.commit()
    assert statuses(db, request.id)["auth"] == "failed"
    found = subject_requests.record_export_part(db, export_answer(request.id, "auth"), NOW)
    assert subject_requests.advance(db, settings, found, NOW, events) == "assemble"
    assert db.get(PrivacyRequest, request.id).status == "in_progress"


# ---------------------------------------------------------------- the archive's bookkeeping


def test_assembly_is_claimed_by_one_builder_and_bounded(db, settings, events, user):
    request = create(db, settings, events, user)
    assert subject_requests.claim_assembly(db, settings, request.id, NOW) is None  # parts missing
    for service in PART_SERVICES:
        subject_requests.record_export_part(db, export_answer(request.id, service), NOW)
    assert subject_requests.buildable_exports(db, settings, NOW) == [request.id]
    assert subject_requests.claim_assembly(db, settings, request.id, NOW) is not None
    db.commit()
    assert subject_requests.claim_assembly(db, settings, request.id, NOW) is None  # leased
    assert subject_requests.buildable_exports(db, settings, NOW) == []
    subject_requests.assembly_failed(db, settings, request.id, "storage down", NOW)
    db.commit()
    assert db.get(PrivacyRequest, request.id).status == "in_progress"
    # tried again after a pause, not at once
    assert subject_requests.claim_assembly(db, settings, request.id, NOW) is None
    later = NOW + subject_requests.ASSEMBLY_BACKOFF
    assert subject_requests.buildable_exports(db, settings, later) == [request.id]
    assert subject_requests.claim_assembly(db, settings, request.id, later) is not None
    subject_requests.assembly_failed(db, settings, request.id, "storage down", later)
    db.commit()
    failed = db.get(PrivacyRequest, request.id)
    assert (failed.status, failed.last_error) == ("failed", "storage down")  # 2 attempts max


def test_a_finished_export_forgets_its_parts_and_is_announced(db, settings, events, user):
    request = create(db, settings, events, user)
    stored_part = uuid.uuid4()
    for service in PART_SERVICES:
        answer = export_answer(request.id, service)
        subject_requests.record_export_part(db, answer, NOW)
    db.get(RequestPart, (request.id, "billing")).object_id = stored_part
    claimed = subject_requests.claim_assembly(db, settings, request.id, NOW)
    archive = {"id": str(uuid.uuid4()), "size": 1234, "expires_at": "2026-11-29T12:00:00Z"}
    leftovers = subject_requests.finish_export(db, claimed, archive, NOW, events)
    db.commit()
    assert leftovers == [stored_part]
    done = db.get(PrivacyRequest, request.id)
    assert (done.status, done.open_type, done.export_size) == ("completed", None, 1234)
    assert all(p.data is None and p.object_id is None for p in subject_requests.parts_of(db, done.id))
    (ready,) = events.of("export_ready")
    assert ready["user_id"] == str(user) and ready["expires_at"].startswith("2026-11-29")
    view = subject_requests.view(settings, done, subject_requests.parts_of(db, done.id), NOW,
                                 {"url": "https://files.example/signed"})
    assert view["download_url"] == "https://files.example/signed"
    assert view["download_expires_at"] == done.export_expires_at


# ---------------------------------------------------------------- reading


def test_another_users_request_is_not_found(db, settings, events, user):
    request = create(db, settings, events, user)
    assert subject_requests.get_for_user(db, user, str(request.id)).id == request.id
    for who, request_id in ((uuid.uuid4(), request.id), (user, uuid.uuid4()), (user, "nope")):
        assert refused(subject_requests.get_for_user, db, who, request_id).status == 404


def test_overdue_requests_come_first_in_the_report(db, settings, events, user):
    old = create(db, settings, events, user, now=NOW - timedelta(days=40))
    new = create(db, settings, events, uuid.uuid4(), "erasure")
    view = subject_requests.view(settings, old, subject_requests.parts_of(db, old.id), NOW)
    assert view["overdue"] is True and all(p["overdue"] for p in view["parts"])
    assert view["download_url"] is None and view["certificate_url"] is None
    report = subject_requests.report(db, settings, NOW)
    assert [r["id"] for r in report["open"]] == [str(old.id), str(new.id)]
    assert [r["overdue"] for r in report["open"]] == [True, False]
    assert "user_id" not in json.dumps(report, default=str)


def test_operators_see_requests_overdue_first_then_by_due_date(db, settings, events, user):
    """``GET /v1/admin/privacy-requests``: the same urgency as the report, with
    whose each request is; closed ones only when asked for."""
    made = {}
    for kind, age in (("export", 1), ("restriction", 40), ("erasure", 35)):
        request = create(db, settings, events, user, kind, now=NOW - timedelta(days=age))
        made[kind] = str(request.id)
    done = db.get(PrivacyRequest, uuid.UUID(made["restriction"]))
    done.status, done.open_type, done.completed_at = "completed", None, NOW
    db.commit()
    now = NOW
    listed = subject_requests.for_operators(db, now)
    assert [r["id"] for r in listed] == [made["erasure"], made["export"]]
    assert [r["overdue"] for r in listed] == [True, False]
    assert listed[0]["user_id"] == str(user) and listed[0]["kind"] == "erasure"
    every = subject_requests.for_operators(db, now, open_only=False)
    # the completed one is not overdue, whatever its due date: after the open overdue one
    assert [r["id"] for r in every] == [made["erasure"], made["restriction"], made["export"]]
    assert every[1]["completed_at"] == NOW
