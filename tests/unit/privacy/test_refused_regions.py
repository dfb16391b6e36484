"""Refused regions: the consent a user gives by listing the regions where
their data must not be processed. Validation (lowercase tokens, deduplicated,
bounded), every change kept, the event that carries them (old events without
them stay valid), the export and the erasure, and the gateway endpoint."""

from __future__ import annotations

from datetime import timedelta

import pytest
from marshmallow import ValidationError

from gateway.app import create_app
from services.common.contracts import privacy as c
from services.privacy import consent, own_data
from tests.unit.gateway.conftest import BASE_CONFIG, BEARER, NOW, USER_ID, FakePool
from tests.unit.privacy.conftest import NOW as DB_NOW
from tests.unit.privacy.test_gateway_api import FakePrivacy

# ---------------------------------------------------------------- the contract


def test_refused_regions_are_lowercase_tokens_deduplicated_and_sorted():
    data = c.UpdateConsents().load({"refused_regions": ["us", "cn", "cn", "on-premises"]})
    assert data == {"refused_regions": ["cn", "on-premises", "us"]}
    assert c.UpdateConsents().load({"refused_regions": []}) == {"refused_regions": []}
    both = c.UpdateConsents().load({"analytics": True, "refused_regions": ["eu-west.1"]})
    assert both == {"analytics": True, "refused_regions": ["eu-west.1"]}


@pytest.mark.parametrize("bad", [
    "cn", None, [""], ["CN"], ["c n"], ["-cn"], ["x" * 33], [1], [["cn"]],
    [f"r{i}" for i in range(c.REFUSED_REGIONS_MAX + 1)],
])
def test_a_bad_list_of_regions_is_refused(bad):
    with pytest.raises(ValidationError) as error:
        c.UpdateConsents().load({"refused_regions": bad})
    assert "refused_regions" in error.value.messages


def test_the_consent_event_carries_refused_regions_and_old_events_stay_valid():
    envelope = {"event_id": "01900000-0000-7000-8000-000000000001", "occurred_at": NOW,
                "version": 1, "user_id": USER_ID, "marketing_email": False, "analytics": True}
    assert c.ConsentChanged().load(envelope)["refused_regions"] is None
    loaded = c.ConsentChanged().load({**envelope, "refused_regions": ["cn"]})
    assert loaded["refused_regions"] == ["cn"]
    with pytest.raises(ValidationError):
        c.ConsentChanged().load({**envelope, "refused_regions": ["Not A Region"]})


# ---------------------------------------------------------------- the privacy service


def test_refused_regions_are_none_until_set_and_every_change_is_kept(db, user):
    assert consent.view(db, user)["refused_regions"] == []
    current, changed = consent.update(db, user, {"refused_regions": ["us", "cn"]}, "api", DB_NOW)
    db.commit()
    assert changed and current["refused_regions"] == ["cn", "us"]
    assert current["refused_regions_changed_at"] == DB_NOW == current["updated_at"]
    assert current["history"] == []  # the purposes did not change
    later = DB_NOW + timedelta(minutes=1)
    current, changed = consent.update(db, user, {"refused_regions": ["cn", "us"]}, "api", later)
    assert not changed  # the same set: nothing recorded
    current, changed = consent.update(db, user, {"refused_regions": [], "analytics": True},
                                      "ops", later)
    db.commit()
    assert changed and current["refused_regions"] == [] and current["analytics"] is True
    assert [r.regions for r in consent.region_history(db, user)] == [[], ["cn", "us"]]
    assert consent.view(db, user)["updated_at"] == later


def test_the_export_holds_the_refused_regions_and_their_history_and_erasure_removes_them(
        db, user):
    consent.update(db, user, {"refused_regions": ["cn"]}, "api", DB_NOW)
    consent.update(db, user, {"refused_regions": ["cn", "us"]}, "api",
                   DB_NOW + timedelta(minutes=1))
    db.commit()
    data = own_data.export(db, user, 180)
    assert data["refused_regions"] == ["cn", "us"]
    assert [h["refused_regions"] for h in data["refused_regions_history"]] == [["cn"],
                                                                             ["cn", "us"]]
    assert "regions you refuse" in data["about"]
    assert own_data.erase(db, user)["region_refusals"] == 2
    db.commit()
    assert consent.view(db, user)["refused_regions"] == []


# ---------------------------------------------------------------- the gateway


class RegionsPrivacy(FakePrivacy):
    def __init__(self):
        super().__init__()
        self.refused: list[str] = []

    def rpc_get_consents(self, user_id):
        return {"marketing_email": False, "analytics": False, "refused_regions": self.refused,
                "refused_regions_changed_at": None, "updated_at": None, "history": [],
                "user_id": "never shown"}

    def rpc_update_consents(self, user_id, payload, source="api"):
        self.refused = payload.get("refused_regions", self.refused)
        return {**self.rpc_get_consents(user_id), "refused_regions_changed_at": NOW,
                "updated_at": NOW}


@pytest.fixture
def privacy() -> RegionsPrivacy:
    return RegionsPrivacy()


@pytest.fixture
def client(privacy):
    pool = FakePool()
    pool.services["privacy"] = privacy
    return create_app({**BASE_CONFIG}, rpc=pool).test_client()


def test_put_consents_takes_refused_regions_and_get_shows_them(client, privacy):
    response = client.put("/v1/privacy/consents", json={"refused_regions": ["us", "cn", "cn"]},
                          headers=BEARER)
    assert response.status_code == 200
    assert response.get_json()["refused_regions"] == ["cn", "us"]
    assert privacy.called("update_consents") == [
        ((USER_ID, {"refused_regions": ["cn", "us"]}, "api"), {})]
    body = client.get("/v1/privacy/consents", headers=BEARER).get_json()
    assert body["refused_regions"] == ["cn", "us"] and "user_id" not in body


@pytest.mark.parametrize("bad", [
    {"refused_regions": "cn"}, {"refused_regions": ["CN"]}, {"refused_regions": [""]},
    {"refused_regions": ["x" * 40]}, {"refused_regions": [f"r{i}" for i in range(21)]},
    {"refused_regions": None},
])
def test_put_consents_with_bad_regions_is_a_clear_400(client, privacy, bad):
    response = client.put("/v1/privacy/consents", json=bad, headers=BEARER)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert "refused_regions" in str(error)
    assert privacy.called("update_consents") == []


def test_refused_regions_need_a_credential(client):
    assert client.put("/v1/privacy/consents", json={"refused_regions": ["cn"]}).status_code == 401
