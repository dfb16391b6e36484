"""The operators' API (gateway/api/admin.py) against fake services: who is
refused before any service is asked, what the services are given (the actor
first), the dead letters of every service asked at once and merged with the
ones that did not answer named, and the errors as the services give them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gateway.rpc import ServiceUnavailable
from tests.unit.gateway.conftest import ADMIN_ID, ADMIN_TOKEN, APIKEY, BEARER, USER_ID, FakeService
from tests.unit.gateway.test_generation_api import FakeGeneration
from tests.unit.privacy.test_gateway_api import FakePrivacy

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SERVICES = ("auth", "billing", "generation", "notifications", "privacy", "storage")


@pytest.fixture
def generation(pool) -> FakeGeneration:
    fake = FakeGeneration()
    pool.services["generation"] = fake
    return fake


@pytest.fixture
def services(pool, generation) -> dict:
    """Every service: dead letters of their own (auth's fake is the gateway's view)."""
    pool.services["privacy"] = FakePrivacy()
    for name in ("billing", "notifications", "storage"):
        pool.services[name] = FakeService(name)
    pool.storage = pool.services["storage"]  # (the pool's own attribute: FakeStorage)
    for name in ("generation", "privacy"):  # the richer fakes: give them the dead letters
        pool.services[name] = _with_dead_letters(pool.services[name], name)
    pool.auth = pool.services["auth"] = _with_dead_letters(pool.auth, "auth")
    return pool.services


def _with_dead_letters(fake, name):
    """``fake`` answering ``admin_dead_letters`` too, as every service does."""
    base = FakeService(name)

    class Both:
        def __getattr__(self, attr):
            if attr in ("admin_dead_letters", "admin_replay_dead_letters", "dead", "healthy"):
                return getattr(base, attr)
            return getattr(fake, attr)

        def __setattr__(self, attr, value):
            setattr(base if attr in ("dead", "healthy") else fake, attr, value)

    return Both()


def error(response) -> tuple[int, str]:
    return response.status_code, response.get_json()["error"]["code"]


PATHS = [("GET", "/v1/admin/jobs"), ("POST", f"/v1/admin/jobs/{uuid.uuid4()}/replay"),
         ("POST", f"/v1/admin/jobs/{uuid.uuid4()}/cancel"), ("GET", "/v1/admin/dead-letters"),
         ("POST", "/v1/admin/dead-letters/billing/dlq.q/replay"),
         ("GET", "/v1/admin/privacy-requests"), ("GET", "/v1/admin/users"),
         ("POST", f"/v1/admin/users/{uuid.uuid4()}/disable"),
         ("POST", f"/v1/admin/users/{uuid.uuid4()}/enable"), ("GET", "/v1/admin/breaches")]


@pytest.mark.parametrize(("method", "path"), PATHS)
def test_anyone_but_an_administrators_session_is_refused_before_any_service(
        client, services, method, path):
    for headers in (BEARER, APIKEY):
        # even with a bad query or body: nothing of the request is read first
        response = client.open(path + "?limit=0", method=method, headers=headers,
                               json={"limit": "x"} if method == "POST" else None)
        assert error(response) == (403, "admin_required")
    assert client.open(path, method=method).status_code == 401
    asked = [name for s in services.values() for name, _, _ in getattr(s, "calls", [])]
    assert not [name for name in asked if name.startswith("admin_")]
    assert not any(getattr(s, "replayed", None) for s in services.values())


def test_failed_jobs_are_asked_newest_first_with_the_actor(client, services, generation):
    failed = generation.add(USER_ID, status="failed")
    generation.add(USER_ID, status="succeeded")
    response = client.get("/v1/admin/jobs?since=2h&reason=provider_error", headers=ADMIN)
    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    assert [(j["id"], j["user_id"]) for j in response.get_json()["items"]] == [(failed, USER_ID)]
    [((actor, query), _)] = generation.called("admin_find_jobs")
    since = datetime.fromisoformat(query.pop("since"))
    assert abs(since - (datetime.now(UTC) - timedelta(hours=2))) < timedelta(minutes=1)
    assert (actor, query) == (ADMIN_ID, {"status": "failed", "reason": "provider_error",
                                         "limit": 100, "order": "newest"})
    for bad in ("since=soon", "since=", "limit=501", "status=lost"):
        assert error(client.get(f"/v1/admin/jobs?{bad}", headers=ADMIN)) == (400, "invalid_request")


def test_replay_and_cancel_answer_the_job_or_the_services_refusal(client, services, generation):
    failed = generation.add(USER_ID, status="failed")
    replayed = client.post(f"/v1/admin/jobs/{failed}/replay", headers=ADMIN)
    assert replayed.status_code == 200 and replayed.get_json()["status"] == "queued"
    assert error(client.post(f"/v1/admin/jobs/{failed}/replay", headers=ADMIN)) == (
        409, "not_replayable")
    assert error(client.post(f"/v1/admin/jobs/{uuid.uuid4()}/cancel", headers=ADMIN)) == (
        404, "not_found")
    assert client.post(f"/v1/admin/jobs/{failed}/cancel", headers=ADMIN).get_json()[
        "status"] == "cancelled"


LETTER = {"event": "billing.order_paid", "error": "KeyError: 'x'", "attempts": 4, "replays": 0,
          "dead_lettered_at": "2026-01-02T03:04:05+00:00", "original_queue": "evt-q",
          "correlation_id": "c-1", "expires_at": None, "body": {"secret": "never shown"}}


def test_dead_letters_of_every_service_merged_the_silent_ones_named(client, services, pool):
    services["billing"].dead = [{"queue": "dlq.evt-q", "messages": 3, "letters": [LETTER]}]
    services["storage"].healthy = False
    listing = client.get("/v1/admin/dead-letters", headers=ADMIN).get_json()
    assert listing["unavailable"] == ["storage"]
    [queue] = listing["items"]
    assert (queue["service"], queue["queue"], queue["messages"]) == ("billing", "dlq.evt-q", 3)
    assert queue["letters"] == [{k: v for k, v in LETTER.items() if k != "body"}]


def test_a_service_refusing_the_actor_is_not_hidden_as_unavailable(client, services):
    services["notifications"].operators = set()  # auth (as this service sees it) says no
    assert error(client.get("/v1/admin/dead-letters", headers=ADMIN)) == (403, "admin_required")


def test_a_replay_goes_to_the_named_service_only(client, services):
    services["billing"].dead = [{"queue": "dlq.evt-q", "messages": 3, "letters": []}]
    response = client.post("/v1/admin/dead-letters/billing/dlq.evt-q/replay", headers=ADMIN,
                           json={"limit": 2})
    assert response.get_json() == {"service": "billing", "queue": "dlq.evt-q", "replayed": 2}
    assert services["billing"].replayed == [(ADMIN_ID, "dlq.evt-q", 2)]
    assert client.post("/v1/admin/dead-letters/billing/dlq.evt-q/replay",
                       headers=ADMIN).status_code == 200  # no body: all of them
    assert services["billing"].replayed[-1] == (ADMIN_ID, "dlq.evt-q", None)
    assert error(client.post("/v1/admin/dead-letters/storage/dlq.evt-q/replay",
                             headers=ADMIN)) == (404, "not_found")  # not storage's
    assert error(client.post("/v1/admin/dead-letters/rabbit/dlq.evt-q/replay",
                             headers=ADMIN)) == (404, "not_found")
    assert error(client.post("/v1/admin/dead-letters/billing/dlq.evt-q/replay", headers=ADMIN,
                             json={"limit": 0})) == (400, "invalid_request")


def test_privacy_requests_users_and_breaches(client, services, auth):
    requests = client.get("/v1/admin/privacy-requests?status=all", headers=ADMIN).get_json()
    assert requests["items"][0]["overdue"] is True and "parts" not in requests["items"][0]
    assert error(client.get("/v1/admin/privacy-requests?status=late", headers=ADMIN)) == (
        400, "invalid_request")
    users = client.get("/v1/admin/users?email=ada", headers=ADMIN).get_json()
    assert users["items"][0]["email"] == "ada@example.com" and users["next_cursor"] is None
    assert auth.called("admin_list_users")[0][0] == (ADMIN_ID, {"email": "ada", "limit": 20})
    disabled = client.post(f"/v1/admin/users/{USER_ID}/disable", headers=ADMIN).get_json()
    assert disabled["disabled"] is True
    assert error(client.post(f"/v1/admin/users/{ADMIN_ID}/disable", headers=ADMIN)) == (
        409, "cannot_disable_self")
    assert client.post(f"/v1/admin/users/{USER_ID}/enable", headers=ADMIN).get_json()[
        "disabled"] is False
    assert client.get("/v1/admin/breaches", headers=ADMIN).get_json() == {"items": []}


def test_an_unreachable_service_is_503(client, services, generation):
    generation.fail_with["admin_find_jobs"] = ServiceUnavailable()
    assert error(client.get("/v1/admin/jobs", headers=ADMIN)) == (503, "service_unavailable")
