"""The privacy service through its real entrypoint (the Procfile's "privacy"
line) with the real auth and storage services (S3 backend on the test S3
endpoint) against RabbitMQ and PostgreSQL. The test stands in for billing,
generation and notifications: it reads the requests the privacy service
publishes and answers them as those services would, or does not.

- An export is assembled from every answer: inline parts, a big part stored
  through storage, the user's media downloaded from storage; the archive is
  stored as an export object and downloadable; the stored part is deleted.
- A service that never answers is asked again, then its part is failed and
  shown in the report; an operator's retry asks again, and the erasure
  completes with a certificate; storage and auth really erase.
- Access-log facts published by the gateway's publisher are stored, and in
  a later batch the late fact of an erased user is dropped, the other kept.
- The retention schedule lists what the running services answer and names
  the others unavailable; an erasure cannot be asked for while auth is away.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import zipfile
from datetime import datetime
from types import SimpleNamespace

import pytest
import requests
from kombu import Connection, Queue
from nameko.standalone.events import event_dispatcher, get_event_exchange
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import create_engine, text

from gateway.access_log import AccessLogPublisher, fact
from services.common import contracts
from services.common import privacy_parts as parts
from services.common.contracts import privacy as _privacy  # noqa: F401 (registers the events)
from services.common.db import normalise_url
from services.common.errors import DomainError
from tests.conftest import base_env, free_port, wait_for

pytestmark = pytest.mark.integration

STAND_INS = ("billing", "generation", "notifications")


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


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, s3_endpoint):
    amqp_uri, _ = make_vhost("privacy")
    ports = {name: free_port() for name in ("auth", "storage", "privacy")}
    privacy_db = make_database("privacy")
    env = base_env(
        AMQP_URI=amqp_uri, OUTBOX_RELAY_INTERVAL_SECONDS=1,
        AUTH_DATABASE_URL=make_database("auth"), AUTH_METRICS_PORT=ports["auth"],
        STORAGE_DATABASE_URL=make_database("storage"), STORAGE_METRICS_PORT=ports["storage"],
        STORAGE_BACKEND="s3", S3_ENDPOINT=s3_endpoint.url, S3_ACCESS_KEY=s3_endpoint.access_key,
        S3_SECRET_KEY=s3_endpoint.secret_key, S3_BUCKET=s3_endpoint.bucket_name("privacy"),
        S3_REGION=s3_endpoint.region,
        PRIVACY_DATABASE_URL=privacy_db, PRIVACY_METRICS_PORT=ports["privacy"],
        PRIVACY_ERASURE_SETTLE_SECONDS=0, PRIVACY_PART_TIMEOUT_SECONDS=1,
        PRIVACY_PART_MAX_ATTEMPTS=2, PRIVACY_RPC_TIMEOUT_SECONDS=3,
    )
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
    registered = stack.rpc.auth.register({"email": email, "password": "correct horse battery"})
    return str(registered["user"]["id"])


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

    created = stack.rpc.privacy.create_request(user, {"type": "erasure"})
    rid = created["id"]
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
    certificate = wait_for(lambda: _certificate(stack, rid), 30, 0.3, "the certificate")
    by_service = {p["service"]: p for p in certificate["services"]}
    assert by_service["storage"]["objects_deleted"] == 1
    assert by_service["auth"]["tables"]["users"] == 1
    assert by_service["privacy"]["tables"]["access_logs"] == 1
    assert by_service["generation"]["tables"] == {"jobs": 2, "webhook_deliveries": 0}
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
    assert services == {"privacy", "auth", "storage"}
    assert retention["unavailable"] == sorted(STAND_INS)
    sessions = [i for i in retention["items"] if i["data"] == "sessions"]
    assert sessions[0]["days"] == 7


def test_an_erasure_is_refused_while_auth_cannot_revoke_credentials(stack, start_process):
    user = new_user(stack)
    stack.processes["auth"].stop()  # its queue stays: calls wait for nobody
    try:
        with pytest.raises(DomainError) as info:
            stack.rpc.privacy.create_request(user, {"type": "erasure"})
        assert (info.value.status, info.value.code) == (503, "service_unavailable")
        assert stack.rpc.privacy.list_requests(user)["items"] == []
    finally:
        stack.processes["auth"] = start_process("auth", stack.env)
    stack.processes["auth"].wait_ready(f"http://127.0.0.1:{stack.ports['auth']}/readyz")
