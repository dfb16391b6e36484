"""Consents (opt-in, every change kept with its time, source and policy
version) and policy versions (publish, accept, who must accept)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from services.common.errors import DomainError
from services.privacy import consent
from tests.unit.privacy.conftest import NOW


def publish(db, version, material=True, at=NOW):
    policy = consent.publish(db, {"version": version, "material": material,
                                  "summary": f"version {version}"}, at)
    db.commit()
    return policy


def test_consents_are_opt_in_and_every_change_is_kept(db, user):
    assert consent.view(db, user) == {"marketing_email": False, "analytics": False,
                                      "preferences": False, "refused_regions": [], "refused_regions_changed_at": None,
                                      "updated_at": None, "history": []}
    publish(db, "v1")
    view, changed = consent.update(db, user, {"marketing_email": True}, "api", NOW)
    assert changed and view["marketing_email"] is True and view["analytics"] is False
    # the same value again records nothing
    _, changed = consent.update(db, user, {"marketing_email": True, "analytics": False}, "api",
                                NOW + timedelta(minutes=1))
    assert not changed
    publish(db, "v2", material=False, at=NOW + timedelta(days=1))
    view, _ = consent.update(db, user, {"marketing_email": False, "analytics": True}, "ops",
                             NOW + timedelta(days=2))
    db.commit()
    assert (view["marketing_email"], view["analytics"]) == (False, True)
    changes = [(h["purpose"], h["granted"], h["source"], h["policy_version"])
               for h in view["history"]]
    # newest first; the two changes of one update share their time
    assert set(changes[:2]) == {("marketing_email", False, "ops", "v2"),
                                ("analytics", True, "ops", "v2")}
    assert changes[2] == ("marketing_email", True, "api", "v1")
    assert view["updated_at"] == NOW + timedelta(days=2)
    assert len(view["history"]) == 3
    assert consent.view(db, uuid.uuid4())["history"] == []  # someone else's


def test_a_consent_source_must_be_known(db, user):
    with pytest.raises(DomainError) as info:
        consent.update(db, user, {"analytics": True}, "guess", NOW)
    assert (info.value.status, info.value.code) == (400, "invalid_request")


def test_policy_versions_are_published_once_and_in_order(db):
    assert consent.current_policy(db) is None
    publish(db, "2026-01")
    with pytest.raises(DomainError) as info:
        consent.publish(db, {"version": "2026-01", "material": False, "summary": "again"}, NOW)
    assert (info.value.status, info.value.code) == (409, "policy_version_exists")
    # a clock that went back still publishes after the current one
    later = publish(db, "2026-02", material=False, at=NOW - timedelta(hours=1))
    assert later.published_at > NOW
    view = consent.policy_view(db, consent.current_policy(db))
    assert (view["version"], view["material"], view["material_version"]) == (
        "2026-02", False, "2026-01")


def test_acceptance_is_required_until_the_latest_material_version_is_accepted(db, user):
    assert consent.status(db, user) == {"current": None, "accepted": None,
                                        "acceptance_required": False}
    publish(db, "v1", material=True)
    assert consent.status(db, user)["acceptance_required"] is True
    consent.accept(db, user, "v1", NOW)
    consent.accept(db, user, "v1", NOW)  # twice is fine
    assert consent.status(db, user) == {"current": "v1", "accepted": "v1",
                                        "acceptance_required": False}
    publish(db, "v1.1", material=False, at=NOW + timedelta(days=1))
    assert consent.status(db, user)["acceptance_required"] is False  # minor: nothing to do
    with pytest.raises(DomainError) as info:
        consent.accept(db, user, "v1", NOW)  # not the current one any more
    assert (info.value.status, info.value.code) == (409, "policy_version_outdated")
    publish(db, "v2", material=True, at=NOW + timedelta(days=2))
    assert consent.status(db, user) == {"current": "v2", "accepted": "v1",
                                        "acceptance_required": True}
    with pytest.raises(DomainError) as info:
        consent.accept(db, user, "v9", NOW)
    assert info.value.status == 404
    consent.accept(db, user, "v2", NOW + timedelta(days=3))
    assert consent.status(db, user)["acceptance_required"] is False
    assert [a.version for a in consent.acceptances(db, user)] == ["v1", "v2"]
    assert consent.status(db, uuid.uuid4())["acceptance_required"] is True


def test_the_cookie_preferences_choice_is_a_consent_of_its_own(db, user):
    """The cookie policy's "Preferences" category is kept with the account like
    analytics: opt-in, each change recorded, independent of the others."""
    publish(db, "v1")
    view, changed = consent.update(db, user, {"preferences": True}, "api", NOW)
    assert changed and (view["preferences"], view["analytics"]) == (True, False)
    view, changed = consent.update(db, user, {"preferences": False, "analytics": True}, "api",
                                   NOW + timedelta(minutes=1))
    db.commit()
    assert (view["preferences"], view["analytics"]) == (False, True)
    assert [(h["purpose"], h["granted"]) for h in view["history"]][-1] == ("preferences", True)
    assert consent.view(db, uuid.uuid4())["preferences"] is False  # someone else's
