"""Access logs: stored once per event, never for an erased user, purged
past their retention, exported with the rest of the privacy service's data."""

from __future__ import annotations

import uuid
from datetime import timedelta

from services.privacy import access_logs, own_data
from services.privacy.models import AccessLog, ErasedSubject
from tests.unit.privacy.conftest import NOW


def fact(user_id, at=NOW, **fields) -> dict:
    return {"event_id": uuid.uuid4(), "user_id": user_id, "at": at, "method": "GET",
            "route": "/v1/images/<uuid:image_id>", "status": 200, "network": "203.0.113.0/24",
            **fields}


def test_a_fact_is_stored_once(db, settings, user):
    event = fact(user)
    assert access_logs.store(db, settings.pseudonym_key, event) is True
    db.commit()
    assert access_logs.store(db, settings.pseudonym_key, event) is False
    assert access_logs.store(db, settings.pseudonym_key, fact(None)) is True  # anonymous
    db.commit()
    assert [a.route for a in access_logs.for_user(db, user)] == ["/v1/images/<uuid:image_id>"]
    assert db.query(AccessLog).count() == 2


def test_an_erased_users_late_facts_are_dropped(db, settings, user):
    subject = access_logs.subject(settings.pseudonym_key, user)
    assert subject.startswith("psn:") and str(user) not in subject
    assert subject != access_logs.subject(b"another key", user)
    db.add(ErasedSubject(subject=subject, erased_at=NOW))
    db.commit()
    assert access_logs.store(db, settings.pseudonym_key, fact(user)) is False
    assert access_logs.store(db, settings.pseudonym_key, fact(uuid.uuid4())) is True


def test_facts_past_their_retention_are_purged_in_batches(db, settings, user):
    for days in (200, 181, 179, 1):
        access_logs.store(db, settings.pseudonym_key, fact(user, at=NOW - timedelta(days=days)))
    db.commit()
    assert access_logs.purge(db, NOW, 180, batch=1) == 1
    assert access_logs.purge(db, NOW, 180, batch=10) == 1
    assert access_logs.purge(db, NOW, 180) == 0
    db.commit()
    kept = sorted((NOW - a.at).days for a in access_logs.for_user(db, user))
    assert kept == [1, 179]


def test_the_privacy_part_of_an_export_holds_consents_requests_and_logs(db, settings, user):
    access_logs.store(db, settings.pseudonym_key, fact(user))
    own_data.set_restricted(db, user, True, NOW)
    db.commit()
    data = own_data.export(db, user, 180)
    assert data["processing_restricted"] is True
    assert data["consents"] == {"marketing_email": False, "analytics": False}
    assert data["access_log"] == [{"at": "2026-11-22T12:00:00Z", "method": "GET",
                                   "route": "/v1/images/<uuid:image_id>", "status": 200,
                                   "network": "203.0.113.0/24"}]
    assert "180 days" in data["about"]
    assert own_data.erase(db, user) == {"consent_changes": 0, "policy_acceptances": 0,
                                        "restrictions": 1, "access_logs": 1}
    assert own_data.export(db, user, 180)["access_log"] == []
