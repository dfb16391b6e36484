"""The operators' API (``/v1/admin``) through the whole stack over HTTP.

An administrator is made as operators make one (``darkroom-ops users
grant-admin``) and signs in with the password and a TOTP code from the
secret it prints. Anyone else (a user's session, an API key) is refused
403 ``admin_required``, by the gateway and, called straight over RPC, by the
services themselves. The admin lists a job failed by the fake vendor,
replays it (it succeeds, charged once) and cancels a queued one; lists a
dead letter of the notifications service and replays it to its queue; lists
privacy requests overdue first; finds, disables (the user's session stops
working) and enables a user; lists breach incidents with their deadline.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kombu import Connection, Producer
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy.orm import Session

from services.auth.totp import code_at, time_step
from services.common.engine import make_engine
from services.common.errors import DomainError
from services.common.messaging import dead_letter_exchange, dlq_name
from services.privacy.models import PrivacyRequest
from tests.conftest import wait_for
from tests.e2e.stack import PASSWORD, refused_within, verified_login
from tests.e2e.test_generation import (
    FINAL,
    SIGNUP_GRANT,
    balance,
    failed_by_the_vendor,
    job,
    queued_behind_a_slow_one,
)

pytestmark = pytest.mark.e2e

OPS = str(Path(sys.executable).parent / "darkroom-ops")
REPO = Path(__file__).resolve().parents[2]
# a queue of the notifications service's own event handlers
NOTIFICATIONS_QUEUE = "evt-privacy-consent_changed--notifications.consent_changed"


def ops(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**stack.env, "OPS_RPC_TIMEOUT_SECONDS": "30"}
    result = subprocess.run([OPS, *args], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    return result


@pytest.fixture(scope="module")
def admin(stack):
    """An administrator signed in with password and TOTP: ``{"id", "email", "token"}``."""
    address, registered, _ = verified_login(stack)
    granted = json.loads(ops(stack, "users", "grant-admin", address, "--json").stdout)
    secret = re.search(r"secret=([A-Z2-7]+)", granted["otpauth_uri"]).group(1)
    code = code_at(secret, time_step(datetime.now(UTC)))
    r = stack.call("POST", "/v1/auth/login",
                   json={"email": address, "password": PASSWORD, "totp_code": code})
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    assert stack.call("GET", "/v1/me", token=token).json()["is_admin"] is True
    return {"id": registered["user"]["id"], "email": address, "token": token}


@pytest.fixture
def user(stack):
    address, registered, token = verified_login(stack)
    wait_for(lambda: balance(stack, token)["available"] == SIGNUP_GRANT, 20, 0.2, "signup grant")
    return {"email": address, "id": registered["user"]["id"], "token": token,
            "api_key": registered["api_key"]["key"]}


def as_admin(stack, admin, method: str, path: str, expect: int = 200, **kw) -> dict:
    response = stack.call(method, "/v1/admin" + path, token=admin["token"], **kw)
    assert response.status_code == expect, response.text
    assert response.headers["Cache-Control"] == "no-store"
    return response.json()


def finished(stack, token, job_id: str, attempt: int = 1) -> dict:
    return wait_for(lambda: (j := job(stack, token, job_id))["attempt"] == attempt
                    and j["status"] in FINAL and j, 60, 0.2, f"job {job_id} to finish")


# ---------------------------------------------------------------- who may call

ENDPOINTS = [("GET", "/jobs"), ("POST", f"/jobs/{uuid.uuid4()}/replay"),
             ("POST", f"/jobs/{uuid.uuid4()}/cancel"), ("GET", "/dead-letters"),
             ("POST", "/dead-letters/notifications/x/replay"), ("GET", "/privacy-requests"),
             ("GET", "/users"), ("POST", f"/users/{uuid.uuid4()}/disable"),
             ("POST", f"/users/{uuid.uuid4()}/enable"), ("GET", "/breaches")]


def test_only_an_administrators_session_may_operate(stack, user):
    for method, path in ENDPOINTS:
        for credential in ({"token": user["token"]}, {"api_key": user["api_key"]}):
            response = stack.call(method, "/v1/admin" + path, **credential)
            assert (response.status_code, response.json()["error"]["code"]) == (
                403, "admin_required"), (method, path, credential.keys())
        assert stack.call(method, "/v1/admin" + path).status_code == 401


def test_the_services_check_the_actor_themselves(stack, user, admin):
    """Called straight over RPC (not through the gateway), each service asks
    auth: a user who is not an administrator, or no user at all, is refused."""
    calls = [("generation", "admin_find_jobs", ()), ("privacy", "admin_list_requests", ()),
             ("privacy", "admin_breaches", ()), ("auth", "admin_list_users", ()),
             ("auth", "admin_disable_user", (admin["id"],)),
             *[(service, "admin_dead_letters", ()) for service in (
                 "auth", "billing", "generation", "notifications", "privacy", "storage")],
             ("notifications", "admin_replay_dead_letters", (NOTIFICATIONS_QUEUE,))]
    with ClusterRpcProxy({"AMQP_URI": stack.env["AMQP_URI"]}, timeout=30) as rpc:
        for service, method, args in calls:
            for actor in (user["id"], str(uuid.uuid4()), "not an id"):
                with pytest.raises(DomainError) as refused:
                    getattr(getattr(rpc, service), method)(actor, *args)
                assert (refused.value.status, refused.value.code) == (403, "admin_required"), (
                    service, method)
        # the administrator passes the same check
        assert rpc.generation.admin_find_jobs(admin["id"], {"limit": 1})["items"] is not None


# ---------------------------------------------------------------- jobs


def test_a_failed_job_is_listed_replayed_and_charged_once(stack, user, admin):
    token = user["token"]
    created, failed = failed_by_the_vendor(stack, token)
    assert failed["status"] == "failed"

    listed = as_admin(stack, admin, "GET", "/jobs", params={"since": "10m"})["items"]
    [found] = [j for j in listed if j["id"] == created["id"]]
    assert (found["status"], found["user_id"], found["error"]["code"]) == (
        "failed", user["id"], failed["error"]["code"])
    assert found["error"]["message"]
    assert all(j["status"] == "failed" for j in listed)  # the default status
    by_reason = as_admin(stack, admin, "GET", "/jobs", params={
        "reason": failed["error"]["code"], "since": datetime.now(UTC).isoformat()})
    assert by_reason["items"] == []  # nothing changed since now
    bad = stack.call("GET", "/v1/admin/jobs", token=admin["token"], params={"since": "soon"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_request")

    replayed = as_admin(stack, admin, "POST", f"/jobs/{created['id']}/replay")
    assert (replayed["attempt"], replayed["status"]) == (2, "queued")
    again = stack.call("POST", f"/v1/admin/jobs/{created['id']}/replay", token=admin["token"])
    assert (again.status_code, again.json()["error"]["code"]) == (409, "not_replayable")
    missing = stack.call("POST", f"/v1/admin/jobs/{uuid.uuid4()}/replay", token=admin["token"])
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")

    done = finished(stack, token, created["id"], attempt=2)
    assert done["status"] == "succeeded"
    settled = wait_for(lambda: (b := balance(stack, token))["held"] == 0 and b, 30, 0.2, "settle")
    assert settled["available"] == SIGNUP_GRANT - 10  # charged once
    kinds = [e["kind"] for e in stack.call("GET", "/v1/billing/ledger", token=token,
                                           params={"limit": 50}).json()["items"]]
    assert (kinds.count("hold"), kinds.count("release"), kinds.count("capture")) == (2, 1, 1)


def test_an_operator_cancels_a_queued_job(stack, user, admin):
    token = user["token"]
    first, second = queued_behind_a_slow_one(stack, token)
    cancelled = as_admin(stack, admin, "POST", f"/jobs/{second['id']}/cancel")
    assert (cancelled["status"], cancelled["user_id"]) == ("cancelled", user["id"])
    assert finished(stack, token, first["id"])["status"] == "succeeded"
    refused = stack.call("POST", f"/v1/admin/jobs/{first['id']}/cancel", token=admin["token"])
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "not_cancellable")
    assert wait_for(lambda: (b := balance(stack, token))["held"] == 0 and b, 30, 0.2,
                    "settle")["available"] == SIGNUP_GRANT - 1  # the second's hold released


# ---------------------------------------------------------------- dead letters


def _dead_letter(amqp_uri: str, marker: str) -> None:
    """What a consent_changed handler gave up on: a payload that fails its schema."""
    with Connection(amqp_uri) as conn:
        producer = Producer(conn.channel(), exchange=dead_letter_exchange())
        producer.publish(json.dumps({"marker": marker}), routing_key=NOTIFICATIONS_QUEUE,
                         content_type="application/json", headers={
                             "x-darkroom-error": "ValidationError: boom",
                             "x-darkroom-event": "privacy.consent_changed",
                             "x-darkroom-attempts": 1,
                             "x-darkroom-original-queue": NOTIFICATIONS_QUEUE,
                             "x-darkroom-dead-lettered-at": datetime.now(UTC).isoformat(),
                             "nameko.correlation_id": marker})


def _take(amqp_uri: str, marker: str) -> int:
    """Remove this test's dead letters (the stack is shared); how many there were."""
    taken = 0
    with Connection(amqp_uri) as conn:
        channel = conn.channel()
        for _ in range(channel.queue_declare(dlq_name(NOTIFICATIONS_QUEUE), passive=True)[1]):
            message = channel.basic_get(dlq_name(NOTIFICATIONS_QUEUE), no_ack=False)
            if message is None:
                break
            if marker in str(message.body):
                channel.basic_ack(message.delivery_tag)
                taken += 1
        channel.close()
    return taken


def _ours(listing: dict, marker: str) -> list[dict]:
    return [letter for queue in listing["items"] if queue["service"] == "notifications"
            and queue["queue"] == dlq_name(NOTIFICATIONS_QUEUE)
            for letter in queue["letters"] if letter["correlation_id"] == marker]


def test_a_dead_letter_is_listed_and_replayed_to_its_queue(stack, admin):
    amqp_uri, marker = stack.env["AMQP_URI"], f"admin-{uuid.uuid4().hex}"
    _dead_letter(amqp_uri, marker)
    try:
        listing = as_admin(stack, admin, "GET", "/dead-letters")
        assert listing["unavailable"] == []
        [letter] = _ours(listing, marker)
        assert letter == {"event": "privacy.consent_changed", "error": "ValidationError: boom",
                          "attempts": 1, "replays": 0, "dead_lettered_at": letter["dead_lettered_at"],
                          "original_queue": NOTIFICATIONS_QUEUE, "correlation_id": marker,
                          "expires_at": None}
        assert "marker" not in json.dumps(listing)  # no bodies
        assert _ours(as_admin(stack, admin, "GET", "/dead-letters"), marker)  # peeked: still there

        # only the service's own queues
        for service, queue in (("billing", NOTIFICATIONS_QUEUE), ("nobody", NOTIFICATIONS_QUEUE),
                               ("notifications", "evt-some-other-queue")):
            refused = stack.call("POST", f"/v1/admin/dead-letters/{service}/{queue}/replay",
                                 token=admin["token"], json={})
            assert (refused.status_code, refused.json()["error"]["code"]) == (404, "not_found")
        bad = stack.call("POST", f"/v1/admin/dead-letters/notifications/{NOTIFICATIONS_QUEUE}"
                                 "/replay", token=admin["token"], json={"limit": 0})
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_request")

        replayed = as_admin(stack, admin, "POST", "/dead-letters/notifications/"
                                                  f"{dlq_name(NOTIFICATIONS_QUEUE)}/replay")
        assert (replayed["service"], replayed["queue"]) == (
            "notifications", dlq_name(NOTIFICATIONS_QUEUE))
        assert replayed["replayed"] >= 1
        # it went through the handler again, which gave it up again (its payload
        # fails the contract): back in the queue, its replay counted
        back = wait_for(lambda: _ours(as_admin(stack, admin, "GET", "/dead-letters"), marker),
                        30, 0.5, "the replayed letter to be dead-lettered again")
        assert back[0]["replays"] == 1 and back[0]["error"].startswith("NonRetryable")
    finally:
        assert _take(amqp_uri, marker) == 1


# ---------------------------------------------------------------- privacy requests


def test_privacy_requests_are_listed_overdue_first(stack, admin, user):
    """Two open requests put in the privacy database as a month would leave
    them: a failed export overdue since yesterday, and one due in ten days."""
    now = datetime.now(UTC)
    engine = make_engine(stack.env["PRIVACY_DATABASE_URL"])
    late, later = uuid.uuid4(), uuid.uuid4()
    try:
        with Session(engine) as db:
            for request_id, kind, due in ((later, "restriction", now + timedelta(days=10)),
                                          (late, "export", now - timedelta(days=1))):
                db.add(PrivacyRequest(id=request_id, user_id=uuid.UUID(user["id"]), type=kind,
                                      status="failed", open_type=None, phase=0,
                                      created_at=due - timedelta(days=30), due_at=due,
                                      updated_at=now, assembly_attempts=0))
            db.commit()
        items = as_admin(stack, admin, "GET", "/privacy-requests")["items"]
        ids = [i["id"] for i in items]
        assert ids.index(str(late)) < ids.index(str(later))
        overdue = [i["overdue"] for i in items]
        assert overdue == sorted(overdue, reverse=True)  # every overdue one first
        mine = {i["id"]: i for i in items}
        assert (mine[str(late)]["overdue"], mine[str(late)]["kind"], mine[str(late)]["user_id"]) \
            == (True, "export", user["id"])
        assert mine[str(later)]["overdue"] is False
        assert all(i["status"] not in ("completed", "cancelled") for i in items)
        assert str(late) in [i["id"] for i in as_admin(
            stack, admin, "GET", "/privacy-requests", params={"status": "all"})["items"]]
    finally:
        with Session(engine) as db:
            for request_id in (late, later):
                db.delete(db.get(PrivacyRequest, request_id))
            db.commit()
        engine.dispose()


# ---------------------------------------------------------------- users


def test_an_operator_finds_disables_and_enables_a_user(stack, admin, user):
    part = user["email"].split("@")[0]
    page = as_admin(stack, admin, "GET", "/users", params={"email": part})
    [found] = page["items"]
    assert (found["id"], found["email"], found["disabled_at"], found["is_admin"]) == (
        user["id"], user["email"], None, False)
    assert found["sessions_active"] >= 1 and page["next_cursor"] is None

    disabled = as_admin(stack, admin, "POST", f"/users/{user['id']}/disable")
    assert (disabled["user_id"], disabled["disabled"]) == (user["id"], True)
    assert disabled["sessions_revoked"] >= 1 and disabled["api_keys_revoked"] == 1
    refused_within(stack, 5, token=user["token"])  # the session stops working
    login = stack.call("POST", "/v1/auth/login", json={"email": user["email"],
                                                        "password": PASSWORD})
    assert (login.status_code, login.json()["error"]["code"]) == (403, "account_disabled")
    [listed] = as_admin(stack, admin, "GET", "/users", params={"email": user["email"]})["items"]
    assert listed["disabled_at"] is not None

    self_ = stack.call("POST", f"/v1/admin/users/{admin['id']}/disable", token=admin["token"])
    assert (self_.status_code, self_.json()["error"]["code"]) == (409, "cannot_disable_self")
    missing = stack.call("POST", f"/v1/admin/users/{uuid.uuid4()}/disable", token=admin["token"])
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")

    enabled = as_admin(stack, admin, "POST", f"/users/{user['id']}/enable")
    assert enabled["disabled"] is False
    assert stack.call("POST", "/v1/auth/login", json={"email": user["email"],
                                                       "password": PASSWORD}).status_code == 200


# ---------------------------------------------------------------- breaches


def test_breach_incidents_are_listed_with_their_deadlines(stack, admin):
    old = json.loads(ops(stack, "breach", "open", "--summary", "a stolen laptop",
                         "--detected-at", "50h", "--categories", "account", "--json").stdout)
    new = json.loads(ops(stack, "breach", "open", "--summary", "a leaked log",
                         "--detected-at", "1h", "--categories", "access_logs", "--json").stdout)
    items = as_admin(stack, admin, "GET", "/breaches")["items"]
    ids = [i["id"] for i in items]
    assert ids.index(old["id"]) < ids.index(new["id"])  # open, nearest deadline first
    mine = {i["id"]: i for i in items}
    for incident, overdue in ((old, True), (new, False)):
        shown = mine[incident["id"]]
        detected = datetime.fromisoformat(shown["detected_at"])
        assert datetime.fromisoformat(shown["authority_deadline"]) == detected + timedelta(hours=72)
        assert (shown["overdue"], shown["state"], shown["reported_at"]) == (overdue, "open", None)
    assert mine[old["id"]]["summary"] == "a stolen laptop"
