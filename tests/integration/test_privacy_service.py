"""The privacy service through its real entrypoint (the Procfile's "privacy"
line) with the real auth and storage services (S3 backend on the test S3
endpoint) against RabbitMQ and PostgreSQL. The test stands in for billing,
generation and notifications: it reads the requests the privacy service
publishes and answers them as those services would, or does not.

- An export is assembled from every answer: inline parts, a big part stored
  through storage, the user's media downloaded from storage; the archive is
  stored as an export object and downloadable; the stored part is deleted.
- An erasure needs a session and the password (auth checks it; wrong ones
  lock the account like failed logins); it waits out its grace period
  (``erasure_scheduled`` carries the cancel token sealed under
  ``MAIL_SECRETS_KEY``, which cancels it once), then auth revokes every
  credential and it starts. The event, published or dead-lettered by a real
  notifications service that cannot open it, never holds the token in clear.
- A service that never answers is asked again, then its part is failed and
  shown in the report; an operator's retry asks again, generation is asked
  once more after everyone else, and the erasure completes with a
  certificate; storage and auth really erase, and the dead letters naming
  the user in storage's and privacy's dead-letter queues are gone.
- Access-log facts published by the gateway's publisher are stored, and in
  a later batch the late fact of an erased user is dropped, the other kept.
- The retention schedule lists what the running services answer and names
  the others unavailable; an erasure cannot be asked for while auth is away.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
import zipfile
from datetime import datetime
from types import SimpleNamespace

import pytest
import requests
from kombu import Connection, Producer, Queue
from nameko.standalone.events import event_dispatcher, get_event_exchange
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import create_engine, text

from gateway.access_log import AccessLogPublisher, fact
from services.common import contracts
from services.common import privacy_parts as parts
from services.common.contracts import privacy as _privacy  # noqa: F401 (registers the events)
from services.common.db import normalise_url
from services.common.errors import DomainError
from services.common.messaging import dead_letter_exchange, dlq_name
from services.common.sealed import Sealer
from services.privacy.requests import token_hash
from tests.conftest import base_env, free_port, wait_for
from tests.integration.probe_service import wait_consuming

pytestmark = pytest.mark.integration

STAND_INS = ("billing", "generation", "notifications")
PASSWORD = "correct horse battery"
GRACE_HOURS = 1 / 1800  # two seconds
# privacy seals the erasure cancel token with it (notifications would open it)
MAIL_SECRETS_KEY = "integration-test-mail-secrets-key"
SEALER = Sealer(MAIL_SECRETS_KEY)


class PrivacyTap:
    """Every event the privacy service publishes, from a queue bound before anything happens."""

    def __init__(self, amqp_uri: str):
        self.connection = Connection(amqp_uri)
        exchange = get_event_exchange("privacy", {})
        self.queue = Queue(f"test-privacy-events-{uuid.uuid4().hex[:8]}", exchange=exchange,
                           routing_key="#", exclusive=True, auto_delete=True)(
            self.connection.channel())
        exchange(self.queue.channel).declare()
        self.queue.declare()
        self.seen: list[tuple[str, dict]] = []

    def events(self, event_type: str, **match) -> list[dict]:
        while (message := self.queue.get(no_ack=True)) is not None:
            self.seen.append((message.delivery_info["routing_key"], message.payload))
        return [body for kind, body in self.seen if kind == event_type
                and all(str(body.get(k)) == str(v) for k, v in match.items())]

    def close(self):
        self.connection.release()


def stack_env(make_database, s3_endpoint, amqp_uri: str, ports: dict, privacy_db: str,
              label: str, **extra) -> dict:
    """The environment of auth, storage (S3) and privacy (and any other
    service ``extra`` configures) on fresh databases, with erasures starting
    two seconds after they are asked."""
    return base_env(
        AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1,
        AUTH_DATABASE_URL=make_database("auth"), AUTH_METRICS_PORT=ports["auth"],
        STORAGE_DATABASE_URL=make_database("storage"), STORAGE_METRICS_PORT=ports["storage"],
        STORAGE_BACKEND="s3", S3_ENDPOINT=s3_endpoint.url, S3_ACCESS_KEY=s3_endpoint.access_key,
        S3_SECRET_KEY=s3_endpoint.secret_key, S3_BUCKET=s3_endpoint.bucket_name(label),
        S3_REGION=s3_endpoint.region,
        PRIVACY_DATABASE_URL=privacy_db, PRIVACY_METRICS_PORT=ports["privacy"],
        PRIVACY_ERASURE_GRACE_HOURS=GRACE_HOURS, PRIVACY_ERASURE_SETTLE_SECONDS=0,
        MAIL_SECRETS_KEY=MAIL_SECRETS_KEY, **extra,
    )


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, s3_endpoint):
    amqp_uri, _ = make_vhost("privacy")
    ports = {name: free_port() for name in ("auth", "storage", "privacy")}
    privacy_db = make_database("privacy")
    env = stack_env(make_database, s3_endpoint, amqp_uri, ports, privacy_db, "privacy",
                    PRIVACY_PART_TIMEOUT_SECONDS=1, PRIVACY_PART_MAX_ATTEMPTS=2,
                    PRIVACY_RPC_TIMEOUT_SECONDS=3)
    tap = PrivacyTap(amqp_uri)
    processes = {name: start_process(name, env) for name in ports}
    for name, port in ports.items():
        processes[name].wait_ready(f"http://127.0.0.1:{port}/readyz")
    engine = create_engine(normalise_url(privacy_db))
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=30) as rpc:
        yield SimpleNamespace(rpc=rpc, tap=tap, amqp_uri=amqp_uri, engine=engine, env=env,
                              processes=processes, ports=ports,
                              dispatch=event_dispatcher({"AMQP_URI": amqp_uri}))
    engine.dispose()
    tap.close()


def answer(stack, service: str, event_type: str, payload: dict) -> None:
    """Publish an answer as ``service`` would, through its contract."""
    body = contracts.make_event(f"{service}.{event_type}", payload)
    stack.dispatch(service, event_type, {k: v for k, v in body.items()})


def new_user(stack) -> str:
    email = f"privacy-{uuid.uuid4().hex[:8]}@example.com"
    registered = stack.rpc.auth.register({"email": email, "password": PASSWORD})
    return str(registered["user"]["id"])


def erasure(password=PASSWORD, **extra) -> dict:
    return {"type": "erasure", "password": password, **extra}


def refusal(call) -> DomainError:
    with pytest.raises(DomainError) as info:
        call()
    return info.value


def dead_letter(stack, queue: str, body: dict) -> None:
    with Connection(stack.amqp_uri) as conn:
        Producer(conn.channel(), exchange=dead_letter_exchange()).publish(
            json.dumps(body), routing_key=queue, content_type="application/json",
            headers={"x-darkroom-error": "boom", "x-darkroom-original-queue": queue})


def dead_letters(stack, queue: str) -> list[dict]:
    """The bodies in ``dlq.<queue>`` (they stay there)."""
    return [json.loads(m.body) for m in dead_letter_messages(stack, queue)]


def dead_letter_messages(stack, queue: str) -> list[SimpleNamespace]:
    """The messages in ``dlq.<queue>``, raw body and headers (they stay there)."""
    with Connection(stack.amqp_uri) as conn:
        channel = conn.channel()
        try:
            _, count, _ = channel.queue_declare(dlq_name(queue), passive=True)
            found = []
            for _ in range(count):
                if (message := channel.basic_get(dlq_name(queue), no_ack=False)) is None:
                    break
                body = message.body if isinstance(message.body, str) else message.body.decode()
                found.append(SimpleNamespace(body=body, headers=message.headers))
            return found
        finally:
            channel.close()


def stored(stack, user_id: str, data: bytes, kind: str, content_type: str) -> dict:
    slot = stack.rpc.storage.create_output_slot(user_id, {
        "job_id": str(uuid.uuid4()), "content_type": content_type, "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "kind": kind})
    requests.put(slot["url"], data=data, headers=slot["headers"], timeout=10).raise_for_status()
    return stack.rpc.storage.commit_objects(user_id, [slot["object_id"]])["items"][0]


def request_status(stack, user_id, request_id) -> dict:
    return stack.rpc.privacy.get_request(user_id, request_id)


def test_an_export_is_assembled_from_every_answer(stack):
    user = new_user(stack)
    media = b"\x89PNG fake bytes of a generated image"
    output = stored(stack, user, media, "output", "image/png")
    big = {"ledger": [{"entry": i, "kind": "grant"} for i in range(40)]}
    part_object = stored(stack, user, parts.zipped(json.dumps(big).encode()), "export",
                         "application/zip")

    created = stack.rpc.privacy.create_request(user, {"type": "export"})
    (asked,) = wait_for(lambda: stack.tap.events("export_requested", request_id=created["id"]),
                        10, 0.1, "the export request")
    assert set(asked["services"]) == {"auth", "billing", "generation", "notifications",
                                      "storage", "privacy"}
    rid = created["id"]
    answer(stack, "billing", "export_part_ready", {
        "request_id": rid, "service": "billing", "data": None, "object_id": part_object["id"],
        "about": "credits", "withheld": []})
    for service in ("generation", "notifications"):
        answer(stack, service, "export_part_ready", parts.export_part(
            rid, service, {"from": service}, f"{service} data"))
    done = wait_for(lambda: (r := request_status(stack, user, rid))["status"] == "completed" and r,
                    30, 0.3, "the export to complete")
    archive = requests.get(done["download_url"], timeout=10)
    assert archive.status_code == 200
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        assert json.loads(zf.read("billing.json"))["data"] == big
        assert json.loads(zf.read("auth.json"))["data"]["account"]["id"] == user
        assert zf.read(f"media/outputs/{output['id']}.png") == media
        listed = json.loads(zf.read("storage.json"))["data"]["objects"]
        assert {o["id"] for o in listed} >= {output["id"], part_object["id"]}
        assert "README.md" in zf.namelist()
    (ready,) = wait_for(lambda: stack.tap.events("export_ready", request_id=rid), 10, 0.1,
                        "export_ready")
    assert ready["user_id"] == user
    # the stored part is inside the archive now: deleted from storage
    wait_for(lambda: _gone(stack, user, part_object["id"]), 10, 0.2, "the part object deleted")
    # another user cannot see the request
    with pytest.raises(DomainError) as info:
        stack.rpc.privacy.get_request(str(uuid.uuid4()), rid)
    assert info.value.status == 404


def _gone(stack, user, object_id) -> bool:
    try:
        stack.rpc.storage.get_object(user, object_id)
    except DomainError as exc:
        return exc.code == "not_found"
    return False


def test_a_silent_service_is_asked_again_failed_then_retried(stack):
    user = new_user(stack)
    stored(stack, user, b"an upload of theirs", "output", "image/png")
    publisher = AccessLogPublisher(stack.amqp_uri)
    assert publisher.publish([fact("GET", "/v1/me", 200, user, "198.51.100.23")])
    wait_for(lambda: _logs(stack, user) == 1, 10, 0.2, "the access log stored")

    # dead letters in real dead-letter queues of storage's and privacy's handlers
    storage_queue = "evt-privacy-erasure_requested--storage.privacy_erasure_requested"
    privacy_queue = "evt-auth-erasure_completed--privacy.auth_erasure_completed"
    other = str(uuid.uuid4())
    dead_letter(stack, storage_queue, {"user_id": user, "n": 1})
    dead_letter(stack, storage_queue, {"user_id": other, "n": 2})
    dead_letter(stack, privacy_queue, {"request_id": str(uuid.uuid4()), "user": user, "n": 3})

    created = stack.rpc.privacy.create_request(user, erasure(), "session")
    rid = created["id"]
    wait_for(lambda: stack.tap.events("erasure_requested", request_id=rid), 20, 0.2,
             "the grace period over")
    # generation never answers: asked twice (the bound), then failed
    wait_for(lambda: len(stack.tap.events("erasure_requested", request_id=rid)) == 2, 20, 0.2,
             "the request asked again")
    report = wait_for(lambda: (r := stack.rpc.privacy.report())["failed_parts"] and r, 20, 0.3,
                      "the part failed")
    assert [(p["request_id"], p["service"]) for p in report["failed_parts"]] == [(rid, "generation")]
    assert [r["status"] for r in report["open"] if r["id"] == rid] == ["failed"]
    assert stack.rpc.privacy.retry_request(rid)["asked_again"] == ["generation"]
    assert len(stack.tap.events("erasure_requested", request_id=rid)) == 3

    started = "2026-11-22T12:00:00Z"
    answer(stack, "generation", "erasure_completed", parts.erasure_result(
        rid, "generation", _t(started), _t(started), {"jobs": 2, "webhook_deliveries": 0}))
    second = wait_for(lambda: [e for e in stack.tap.events("erasure_requested", request_id=rid)
                               if "generation" not in e["services"]], 10, 0.1, "phase two")
    assert set(second[0]["services"]) == {"auth", "billing", "notifications", "storage", "privacy"}
    for service in ("billing", "notifications"):
        answer(stack, service, "erasure_completed", parts.erasure_result(
            rid, service, _t(started), _t(started), {"rows": 1}))
    # every part in: generation is asked once more before the certificate
    recheck = wait_for(lambda: [e for e in stack.tap.events("erasure_requested", request_id=rid)
                                if e.get("recheck")], 20, 0.2, "the recheck")
    assert recheck[0]["services"] == ["generation"]
    assert _certificate(stack, rid) is None
    answer(stack, "generation", "erasure_completed", parts.erasure_result(
        rid, "generation", _t(started), _t(started), {"jobs": 1}, recheck=True))
    certificate = wait_for(lambda: _certificate(stack, rid), 30, 0.3, "the certificate")
    by_service = {p["service"]: p for p in certificate["services"]}
    assert by_service["storage"]["objects_deleted"] == 1
    assert by_service["auth"]["tables"]["users"] == 1
    assert by_service["privacy"]["tables"]["access_logs"] == 1
    assert by_service["generation"]["tables"] == {"jobs": 3, "webhook_deliveries": 0}
    assert by_service["storage"]["tables"]["dead_letters"] == 1
    assert by_service["privacy"]["tables"]["dead_letters"] == 1
    assert [b["n"] for b in dead_letters(stack, storage_queue)] == [2]
    assert dead_letters(stack, privacy_queue) == []
    assert user not in json.dumps(certificate)
    with pytest.raises(DomainError):
        stack.rpc.auth.get_user(user)  # really erased
    # in one batch, a late access log of the erased user is dropped, an anonymous one kept
    anonymous = _anonymous_logs(stack)
    assert publisher.publish([fact("GET", "/v1/me", 401, user, "198.51.100.23"),
                              fact("GET", "/v1/me", 401, None, "198.51.100.23")])
    wait_for(lambda: _anonymous_logs(stack) == anonymous + 1, 10, 0.2, "the anonymous log")
    assert _logs(stack, user) == 0
    with stack.engine.connect() as conn:
        rows = conn.execute(text("SELECT row_to_json(r)::text FROM privacy_requests r")).all()
    assert not [r for (r,) in rows if user in r]


def _t(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _certificate(stack, request_id):
    try:
        return stack.rpc.privacy.get_certificate(request_id)
    except DomainError:
        return None


def _logs(stack, user) -> int:
    with stack.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM access_logs WHERE user_id = :u"),
                            {"u": uuid.UUID(user)}).scalar()


def _anonymous_logs(stack) -> int:
    with stack.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM access_logs WHERE user_id IS NULL")).scalar()


def test_the_retention_schedule_names_the_services_that_did_not_answer(stack):
    retention = stack.rpc.privacy.get_retention()
    services = {item["service"] for item in retention["items"]}
    assert services == {"privacy", "auth", "storage", "backups"}
    assert retention["unavailable"] == sorted(STAND_INS)
    # the backup sets, from the backup job's rotation (the defaults here)
    [backups] = [i for i in retention["items"] if i["service"] == "backups"]
    assert backups["days"] == 186.0 and "7 days, 4 ISO weeks and 6 months" in backups["kept"]
    sessions = [i for i in retention["items"] if i["data"] == "sessions"]
    assert sessions[0]["days"] == 7


def test_an_erasure_needs_a_session_and_the_password_and_guessing_locks(stack):
    user = new_user(stack)
    error = refusal(lambda: stack.rpc.privacy.create_request(user, erasure(), "api_key"))
    assert (error.status, error.code) == (403, "session_required")
    error = refusal(lambda: stack.rpc.privacy.create_request(user, {"type": "erasure"}, "session"))
    assert (error.status, error.code) == (401, "reauthentication_required")
    for _ in range(5):  # AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT
        error = refusal(lambda: stack.rpc.privacy.create_request(user, erasure("wrong guess"),
                                                                 "session"))
        assert (error.status, error.code) == (401, "reauthentication_required")
    # locked like after failed logins: even the right password is refused now
    error = refusal(lambda: stack.rpc.privacy.create_request(user, erasure(), "session"))
    assert (error.status, error.code) == (429, "rate_limited")
    assert stack.rpc.privacy.list_requests(user)["items"] == []
    assert stack.tap.events("erasure_scheduled", user_id=user) == []


def test_the_mailed_token_cancels_the_erasure_in_its_grace_period(stack):
    user = new_user(stack)
    login = stack.rpc.auth.login({"email": stack.rpc.auth.get_user(user)["email"],
                                  "password": PASSWORD})
    created = stack.rpc.privacy.create_request(user, erasure(), "session")
    (scheduled,) = wait_for(lambda: stack.tap.events("erasure_scheduled", request_id=created["id"]),
                            10, 0.1, "erasure_scheduled")
    assert scheduled["user_id"] == user
    token = SEALER.open(scheduled["sealed_cancel_token"])
    assert "cancel_token" not in scheduled and token not in json.dumps(scheduled)
    cancelled = stack.rpc.privacy.cancel_with_token(created["id"], {"token": token})
    assert cancelled["status"] == "cancelled"
    wait_for(lambda: stack.tap.events("erasure_cancelled", request_id=created["id"]), 10, 0.1,
             "erasure_cancelled")
    error = refusal(lambda: stack.rpc.privacy.cancel_with_token(
        created["id"], {"token": token}))
    assert (error.status, error.code) == (400, "invalid_token")  # single use
    # well past the grace period: nothing was revoked, nothing erased
    time.sleep(GRACE_HOURS * 3600 + 2.5)
    assert stack.rpc.auth.authenticate({"token": login["token"]})["user_id"] == user
    assert stack.tap.events("erasure_requested", request_id=created["id"]) == []


def test_a_dead_lettered_erasure_scheduled_event_holds_the_cancel_token_sealed_only(
        stack, make_database, start_process, tmp_path):
    """A real notifications service whose MAIL_SECRETS_KEY is not privacy's
    (a botched rotation) cannot open the token: the event is dead-lettered at
    once. What operators read there holds the token sealed only, and privacy's
    key opens it to the request's cancel token (the one whose hash the request
    keeps; the grace period here is too short to race the dead-lettering)."""
    port = free_port()
    notifications = start_process("notifications", base_env(
        AMQP_URI=stack.amqp_uri, NOTIFICATIONS_DATABASE_URL=make_database("notifications"),
        NOTIFICATIONS_METRICS_PORT=port, MAIL_URL=f"file://{tmp_path / 'mail'}",
        APP_BASE_URL="http://app.example", MAIL_SECRETS_KEY="not-privacys-mail-secrets-key"))
    queue = "evt-privacy-erasure_scheduled--notifications.erasure_scheduled"
    try:
        notifications.wait_ready(f"http://127.0.0.1:{port}/readyz")
        wait_consuming(stack.amqp_uri, queue, notifications)
        user = new_user(stack)
        created = stack.rpc.privacy.create_request(user, erasure(), "session")
        with stack.engine.connect() as conn:  # before the grace period ends and voids it
            cancel_hash = conn.execute(text("SELECT cancel_token_hash FROM privacy_requests "
                                            "WHERE id = :id"), {"id": uuid.UUID(created["id"])}).scalar()
        dead = wait_for(lambda: [m for m in dead_letter_messages(stack, queue)
                                 if created["id"] in m.body], 20, 0.2, "the dead letter")
    finally:
        notifications.stop()
    (message,) = dead
    assert "the sealed secret cannot be opened" in message.headers["x-darkroom-error"]
    assert message.headers["x-darkroom-attempts"] == 1  # NonRetryable: at once
    body = json.loads(message.body)
    assert body["request_id"] == created["id"] and "cancel_token" not in body
    token = SEALER.open(body["sealed_cancel_token"])
    assert token not in message.body and token not in json.dumps(message.headers, default=str)
    assert cancel_hash is not None and token_hash(token) == cancel_hash
    assert not list((tmp_path / "mail").glob("*.eml"))  # no mail without the link


def test_after_the_grace_period_every_credential_is_revoked(stack):
    user = new_user(stack)
    login = stack.rpc.auth.login({"email": stack.rpc.auth.get_user(user)["email"],
                                  "password": PASSWORD})
    created = stack.rpc.privacy.create_request(user, erasure(), "session")
    # during the grace period the owner can still sign in and cancel
    assert stack.rpc.auth.authenticate({"token": login["token"]})["user_id"] == user
    wait_for(lambda: stack.tap.events("erasure_requested", request_id=created["id"]), 20, 0.2,
             "the erasure started")
    error = refusal(lambda: stack.rpc.auth.authenticate({"token": login["token"]}))
    assert error.status == 401
    error = refusal(lambda: stack.rpc.privacy.cancel_request(user, created["id"], "session"))
    assert (error.status, error.code) == (409, "not_cancellable")


def test_an_erasure_is_refused_while_auth_cannot_check_the_password(stack, start_process):
    user = new_user(stack)
    stack.processes["auth"].stop()  # its queue stays: calls wait for nobody
    try:
        with pytest.raises(DomainError) as info:
            stack.rpc.privacy.create_request(user, erasure(), "session")
        assert (info.value.status, info.value.code) == (503, "service_unavailable")
        assert stack.rpc.privacy.list_requests(user)["items"] == []
    finally:
        stack.processes["auth"] = start_process("auth", stack.env)
    stack.processes["auth"].wait_ready(f"http://127.0.0.1:{stack.ports['auth']}/readyz")
