"""Breach incidents (services/privacy/breaches.py): the 72-hour deadline, the
48-hour overdue rule, the affected set kept as keyed hashes, notices sent
once and never to an erased user, the regulator report, the audit trail."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from services.common.errors import DomainError
from services.common.ids import pseudonym
from services.privacy import access_logs, breaches
from services.privacy.models import BreachLog, BreachSubject, ErasedSubject
from tests.unit.privacy.conftest import NOW


def opened(db, detected=NOW - timedelta(hours=1), categories=("account", "images")):
    incident = breaches.open_incident(db, "bucket left public", list(categories), detected, NOW)
    db.commit()
    return incident


def actions(db, incident) -> list[str]:
    return list(db.scalars(select(BreachLog.action).where(BreachLog.incident_id == incident.id)
                           .order_by(BreachLog.at, BreachLog.id)))


def test_the_regulator_deadline_is_72_hours_after_detection(db):
    detected = NOW - timedelta(hours=10)
    incident = opened(db, detected)
    assert incident.deadline_at == detected + timedelta(hours=72)
    view = breaches.view(db, incident, NOW)
    assert view["hours_left"] == 62.0 and view["state"] == "open" and not view["overdue"]
    assert actions(db, incident) == ["opened"]


def test_an_incident_open_48_hours_after_detection_is_overdue_until_reported(db):
    incident = opened(db, NOW - timedelta(hours=48))
    young = opened(db, NOW - timedelta(hours=47, minutes=59))
    assert breaches.is_overdue(incident, NOW)
    assert not breaches.is_overdue(young, NOW)
    assert [i["id"] for i in breaches.overdue(db, NOW)] == [str(incident.id)]
    breaches.build_report(db, incident, "dpo@example.com", ["keys rotated"], None, NOW)
    db.commit()
    assert not breaches.is_overdue(incident, NOW)
    assert breaches.overdue(db, NOW) == []


@pytest.mark.parametrize("summary, categories, detected, code", [
    ("", ["account"], NOW, "invalid_request"),
    ("leak", [], NOW, "invalid_request"),
    ("leak", ["account", "dna"], NOW, "invalid_request"),
    ("leak", ["account"], NOW + timedelta(hours=1), "invalid_request"),
])
def test_bad_input_is_refused(db, summary, categories, detected, code):
    with pytest.raises(DomainError) as error:
        breaches.open_incident(db, summary, categories, detected, NOW)
    assert error.value.code == code and error.value.status == 400


def test_the_affected_set_is_pseudonymised_and_merged(db, settings):
    incident = opened(db)
    a, b = uuid.uuid4(), uuid.uuid4()
    key = settings.pseudonym_key
    result = breaches.record_affected(db, key, incident, NOW - timedelta(days=2), NOW,
                                      {"auth": {str(a): 1}, "storage": {str(a): 3, str(b): 2}},
                                      NOW)
    db.commit()
    assert result == {"found": 2, "added": 2, "affected": 2, "records": 6,
                      "by_source": {"auth": 1, "storage": 2}}
    rows = {r.subject: r for r in db.scalars(select(BreachSubject))}
    assert set(rows) == {pseudonym(key, a), pseudonym(key, b)}
    assert rows[pseudonym(key, a)].sources == ["auth", "storage"]
    assert all(r.notice == "pending" for r in rows.values())
    # a wider window: the users found before are not added twice
    again = breaches.record_affected(db, key, incident, NOW - timedelta(days=3), NOW,
                                     {"storage": {str(b): 2}}, NOW)
    assert again["added"] == 0 and again["affected"] == 2
    assert incident.window_from == NOW - timedelta(days=3)


def test_notices_are_sent_once_in_batches_and_never_to_an_erased_user(db, settings, events):
    incident = opened(db)
    key = settings.pseudonym_key
    users = [uuid.uuid4() for _ in range(5)]
    breaches.record_affected(db, key, incident, NOW - timedelta(days=1), NOW,
                             {"auth": {str(u): 1 for u in users}}, NOW)
    db.commit()
    erased = users[0]
    db.add(ErasedSubject(subject=pseudonym(key, erased), erased_at=NOW))
    db.commit()

    first = breaches.notify_batch(db, key, incident, NOW, events, limit=2)
    db.commit()
    assert first["sent_now"] + first["skipped_now"] == 2 and first["pending"] == 3
    while (result := breaches.notify_batch(db, key, incident, NOW, events, limit=2))["pending"]:
        db.commit()
    db.commit()
    assert result["notices"] == {"pending": 0, "sent": 4, "skipped_erased": 1}
    mailed = {e["user_id"] for e in events.of("breach_notice")}
    assert mailed == {str(u) for u in users[1:]}
    assert incident.notified_at == NOW
    # run again: nothing more is sent
    events.clear()
    assert breaches.notify_batch(db, key, incident, NOW, events)["sent_now"] == 0
    assert events.of("breach_notice") == []
    # no user id is kept once the notice is done
    assert list(db.scalars(select(BreachSubject.user_id))) == [None] * 5
    assert "notices_sent" in actions(db, incident) and "notified" in actions(db, incident)


def test_notify_needs_the_affected_set(db, settings, events):
    incident = opened(db)
    with pytest.raises(DomainError) as error:
        breaches.notify_batch(db, settings.pseudonym_key, incident, NOW, events)
    assert error.value.code == "affected_not_computed" and error.value.status == 409


def test_erasure_keeps_the_incident_but_drops_the_id_and_the_notice(db, settings, events):
    incident = opened(db)
    key = settings.pseudonym_key
    user, other = uuid.uuid4(), uuid.uuid4()
    breaches.record_affected(db, key, incident, NOW - timedelta(days=1), NOW,
                             {"access_logs": {user: 4, other: 1}}, NOW)
    db.commit()
    assert breaches.forget_user(db, key, user) == 1
    db.commit()
    row = db.get(BreachSubject, (incident.id, pseudonym(key, user)))
    assert row.user_id is None and row.notice == "skipped_erased" and row.records == 4
    breaches.notify_batch(db, key, incident, NOW, events)
    assert [e["user_id"] for e in events.of("breach_notice")] == [str(other)]
    assert incident.affected_count == 2 and incident.records_count == 5


def test_an_erased_user_found_later_is_kept_as_a_hash_only(db, settings):
    incident = opened(db)
    key = settings.pseudonym_key
    gone = uuid.uuid4()
    db.add(ErasedSubject(subject=pseudonym(key, gone), erased_at=NOW))
    breaches.record_affected(db, key, incident, NOW - timedelta(days=1), NOW,
                             {"auth": {str(gone): 1}}, NOW)
    row = db.scalars(select(BreachSubject)).one()
    assert row.user_id is None and row.notice == "skipped_erased"


def test_the_report_and_its_audit(db, settings):
    incident = opened(db, categories=("credentials",))
    breaches.record_affected(db, settings.pseudonym_key, incident, NOW - timedelta(days=1), NOW,
                             {"auth": {str(uuid.uuid4()): 2}}, NOW)
    report = breaches.build_report(db, incident, "dpo@example.com", ["passwords reset"], [], NOW)
    assert report["approximate_people"] == 1 and report["approximate_records"] == 2
    assert report["likely_consequences"] == [breaches.CONSEQUENCES["credentials"]]
    assert report["reported_within_deadline"] is True
    assert report["contact_point"] == "dpo@example.com"
    assert incident.state == "reported" and incident.report == report
    # later (the log is in time order; rows of one instant have no order)
    breaches.build_report(db, incident, "dpo@example.com", ["passwords reset", "MFA"], [],
                          NOW + timedelta(minutes=5))
    assert actions(db, incident)[-2:] == ["reported", "report_replaced"]
    with pytest.raises(DomainError) as error:
        breaches.record_affected(db, settings.pseudonym_key, incident, NOW - timedelta(days=1),
                                 NOW, {}, NOW)
    assert error.value.code == "incident_reported"
    with pytest.raises(DomainError):
        breaches.build_report(db, incident, " ", ["x"], [], NOW)


def test_access_log_users_counts_rows_in_the_window(db, settings):
    user = uuid.uuid4()
    facts = [{"id": uuid.uuid4(), "user_id": user, "at": NOW - timedelta(hours=h),
              "method": "GET", "route": "/v1/me", "status": 200} for h in (1, 2, 30)]
    access_logs.store_all(db, settings.pseudonym_key, facts)
    db.commit()
    assert breaches.access_log_users(db, NOW - timedelta(days=1), NOW) == {user: 2}


def test_sources_follow_the_categories(db):
    incident = opened(db, categories=("account", "access_logs"))
    assert breaches.sources_for(incident) == ["auth", "access_logs"]
    assert breaches.sources_for(incident, ["access_logs"]) == ["access_logs"]
    with pytest.raises(DomainError):
        breaches.sources_for(incident, ["images"])
