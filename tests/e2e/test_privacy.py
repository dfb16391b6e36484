"""Privacy through the whole stack over HTTP.

A user with a verified address, an upload, a generated output, a payment,
consents, an accepted policy and access logs asks for an export and gets a
ZIP holding all of it and nothing of another user's; then asks for erasure
(with a session and the password: an API key or no password is refused),
gets the mail with the cancel link, cannot generate during the grace
period, and when it completes every service's database and the object store are
scanned: no trace of the address, the id, the prompt or the files remains
except the pseudonymised payment records, the certificate's counts match
what was there, and the address can register again. The mailed link
cancels an erasure without signing in, and the account generates again. A
service that is down during an erasure delays it, and it completes when the
service returns.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest
import requests
from PIL import Image
from sqlalchemy import create_engine, inspect, text

from ops import privacy as privacy_ops
from services.common.db import normalise_url
from services.common.fieldcrypt import email_index
from tests.conftest import wait_for
from tests.e2e.stack import PASSWORD, body_text, post_stripe_event, token_from, verified_login
from tests.sealed import plaintext

pytestmark = pytest.mark.e2e

OPS = str(Path(sys.executable).parent / "darkroom-ops")
REPO = Path(__file__).resolve().parents[2]
SERVICES = ("auth", "billing", "generation", "notifications", "storage", "privacy")
JSON_FILES = {f"{s}.json" for s in SERVICES} | {"README.md"}


# ---------------------------------------------------------------- helpers


def call_ok(stack, method, path, status=200, **kw):
    response = stack.call(method, path, **kw)
    assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}"
    return response.json() if response.content else None


def upload_png(stack, token, color) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (80, 48), color).save(buf, "PNG")
    answer = call_ok(stack, "POST", "/v1/uploads", 201, token=token,
                     files={"file": ("mine.png", buf.getvalue(), "image/png")})
    return answer["id"]


def generate(stack, token, prompt, source=None) -> dict:
    """A job to its end: text-to-image, or image-to-image from ``source`` (the
    local renderer: bytes that depend on the prompt, so no other user's match)."""
    body = {"type": "text-to-image", "prompt": prompt, "size": "512x512"}
    if source:
        body.update(type="image-to-image", source_image_id=source)
    job = call_ok(stack, "POST", "/v1/generations", 202, token=token, json=body)
    return wait_for(lambda: (j := call_ok(stack, "GET", f"/v1/generations/{job['id']}",
                                          token=token))["status"] == "succeeded" and j,
                    60, 0.3, "the job to succeed")


def pay(stack, token) -> str:
    created = call_ok(stack, "POST", "/v1/billing/checkout", 201, token=token,
                      json={"pack_id": "small"})
    session = stack.stripe.session_for_order(created["order_id"])
    assert post_stripe_event(stack, stack.stripe.checkout_completed(session["id"])).status_code == 200
    wait_for(lambda: call_ok(stack, "GET", "/v1/billing/orders", token=token)["items"][0]["status"]
             == "paid", 20, 0.2, "the order to be paid")
    return created["order_id"]


def quote(stack, token):
    """A dry run of a job: refused like a job while processing is restricted, creates nothing."""
    return stack.call("POST", "/v1/generations", token=token, params={"dry_run": "true"},
                      json={"type": "text-to-image", "prompt": "a quote", "size": "512x512"})


ERASURE = {"type": "erasure", "password": PASSWORD}


def api_key(stack, token) -> str:
    return call_ok(stack, "POST", "/v1/me/api-keys", 201, token=token,
                   json={"name": "e2e"})["key"]


def mail_with(stack, address, subject_part):
    return wait_for(lambda: next((m for m in stack.mails_to(address)
                                  if subject_part in str(m["Subject"])), None),
                    30, 0.2, f"a mail about {subject_part!r} to {address}")


def media_bytes(stack, token, image_id) -> bytes:
    response = stack.call("GET", f"/v1/images/{image_id}/content", token=token)
    assert response.status_code == 200, response.text
    return response.content


def ops(stack, *args) -> subprocess.CompletedProcess:
    return subprocess.run([OPS, *args], env={**stack.env, "OPS_RPC_TIMEOUT_SECONDS": "30"},
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def database_urls(stack) -> dict[str, str]:
    return {s: normalise_url(stack.env[f"{s.upper()}_DATABASE_URL"]) for s in SERVICES}


def accounts_with(stack, address: str) -> int:
    """Accounts of ``address`` in auth's database, by its blind index (addresses
    are encrypted)."""
    return query(database_urls(stack)["auth"],
                 "SELECT count(*) FROM users WHERE email_index = :e", e=email_index(address))


def query(url: str, sql: str, **params):
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()
    finally:
        engine.dispose()


def scan_databases(stack, needles: list[str]) -> list[tuple[str, str, str, str]]:
    """(service, table, needle, row) for every row of every table of every
    service's database whose JSON text contains a needle."""
    found = []
    for service, url in database_urls(stack).items():
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                for table in inspect(conn).get_table_names():
                    for (row,) in conn.execute(text(f'SELECT row_to_json(t)::text FROM "{table}" t')):
                        lowered = row.lower()
                        found += [(service, table, n, row[:300]) for n in needles
                                  if n.lower() in lowered]
        finally:
            engine.dispose()
    return found


def stored_files(stack) -> dict[str, str]:
    """Every file of the object store (the fs backend's directory): relative path
    → sha256 of its plaintext (the files are sealed under the development key ring)."""
    files = {}
    for root, _, names in os.walk(stack.objects_dir):
        for name in names:
            path = Path(root) / name
            files[str(path.relative_to(stack.objects_dir))] = hashlib.sha256(
                plaintext(path)).hexdigest()
    return files


def counts_before_erasure(stack, uid: str) -> dict[str, int]:
    urls = database_urls(stack)

    def count(service, table, column="user_id", extra=""):
        return query(urls[service], f'SELECT count(*) FROM "{table}" WHERE {column} = :u {extra}',
                     u=uid)

    return {
        "storage_objects": count("storage", "objects", "owner_id", "AND deleted_at IS NULL"),
        "storage_bytes": query(urls["storage"], "SELECT coalesce(sum(size), 0) FROM objects "
                               "WHERE owner_id = :u AND deleted_at IS NULL", u=uid),
        "billing_deleted": sum(count("billing", t) for t in
                               ("accounts", "ledger_entries", "lots", "lot_movements", "holds")),
        "billing_pseudonymised": sum(count("billing", t, "user_ref") for t in ("orders", "payments")),
        "generation": sum(count("generation", t) for t in
                          ("jobs", "webhook_deliveries", "disclosures", "restricted_users",
                           "refused_regions")),
        "notifications": sum(count("notifications", t) for t in
                             ("notifications", "marketing_preferences")),
        "auth": count("auth", "users", "id") + sum(count("auth", t) for t in (
            "sessions", "api_keys", "email_verifications", "password_resets", "known_networks",
            "webhook_secrets", "passkeys", "passkey_challenges")),
        "consent_changes": count("privacy", "consent_changes"),
        "access_logs": count("privacy", "access_logs"),
    }


def certificate(stack, request_id, timeout=60) -> dict:
    return wait_for(lambda: (r := stack.call("GET", f"/v1/privacy/certificates/{request_id}"))
                    .status_code == 200 and r.json(), timeout, 0.5, "the erasure certificate")


# ---------------------------------------------------------------- the journey


@pytest.fixture
def bystander(stack):
    """Another user with a file and a job: none of it may leak or be erased."""
    address, registered, token = verified_login(stack)
    marker = uuid.uuid4().hex
    upload = upload_png(stack, token, (200, 10, 10))
    generate(stack, token, f"a bystander's harbour {marker}")
    return {"email": address, "id": registered["user"]["id"], "token": token,
            "marker": marker, "upload": upload}


def test_export_then_erasure_leave_no_trace(stack, bystander):
    address, registered, token = verified_login(stack)
    uid = registered["user"]["id"]
    marker = uuid.uuid4().hex
    prompt = f"a lighthouse at dusk {marker}"

    # a policy to accept (operators publish it), consents, restriction and its lifting
    version = f"e2e-{marker[:8]}"
    published = ops(stack, "privacy", "publish-policy", "--version", version, "--material",
                    "--summary", "We now say how long access logs are kept.")
    assert published.returncode == 0, published.stderr
    me = call_ok(stack, "GET", "/v1/me", token=token)
    assert me["policy"] == {"current": version, "accepted": None, "acceptance_required": True}
    call_ok(stack, "POST", "/v1/privacy/policy/accept", token=token, json={"version": version})
    assert call_ok(stack, "GET", "/v1/me", token=token)["policy"]["acceptance_required"] is False
    consents = call_ok(stack, "PUT", "/v1/privacy/consents", token=token,
                       json={"marketing_email": True})
    assert consents["marketing_email"] is True and consents["history"][0]["policy_version"] == version

    restricted = call_ok(stack, "POST", "/v1/privacy/requests", 202, token=token,
                         json={"type": "restriction"})
    assert restricted["status"] == "completed"
    refused = wait_for(lambda: (r := quote(stack, token)).status_code == 403 and r.json(), 20,
                       0.3, "generation to refuse a restricted account")
    assert refused["error"]["code"] == "processing_restricted"
    assert wait_for(lambda: call_ok(stack, "GET", "/v1/me", token=token)["processing_restricted"],
                    20, 0.3, "/v1/me to show the restriction")
    again = stack.call("POST", "/v1/privacy/requests", token=token, json={"type": "restriction"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_restricted"
    call_ok(stack, "POST", "/v1/privacy/requests", 202, token=token,
            json={"type": "lift_restriction"})
    wait_for(lambda: quote(stack, token).status_code == 200, 20, 0.3, "the restriction lifted")

    # the data: an upload, a generated output, a payment (and mails, access logs)
    upload = upload_png(stack, token, (10, 200, 10))
    job = generate(stack, token, prompt, source=upload)
    order_id = pay(stack, token)
    mail_with(stack, address, "receipt")
    files = {i: hashlib.sha256(media_bytes(stack, token, i)).hexdigest()
             for i in [upload, *job["outputs"]]}

    # ---- export
    created = call_ok(stack, "POST", "/v1/privacy/requests", 202, token=token,
                      json={"type": "export"})
    assert created["type"] == "export" and created["due_at"] > created["created_at"]
    again = stack.call("POST", "/v1/privacy/requests", token=token, json={"type": "export"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    # someone else's request does not exist for them
    for method in ("GET", "DELETE"):
        other = stack.call(method, f"/v1/privacy/requests/{created['id']}",
                           token=bystander["token"])
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"

    done = wait_for(lambda: (r := call_ok(stack, "GET", f"/v1/privacy/requests/{created['id']}",
                                          token=token))["status"] == "completed" and r,
                    60, 0.5, "the export to complete")
    assert {p["service"] for p in done["parts"]} == set(SERVICES)
    assert all(p["status"] == "completed" for p in done["parts"])
    archive = requests.get(done["download_url"], timeout=30)
    assert archive.status_code == 200
    mail = mail_with(stack, address, "export is ready")
    assert created["id"] in body_text(mail)

    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        names = set(zf.namelist())
        assert JSON_FILES <= names
        contents = {n: zf.read(n) for n in names}
    parts = {n[:-5]: json.loads(contents[n]) for n in names if n.endswith(".json")}
    assert parts["auth"]["data"]["account"]["email"] == address
    assert [j["prompt"] for j in parts["generation"]["data"]["jobs"]] == [prompt]
    assert {o["id"] for o in parts["storage"]["data"]["objects"]} >= set(files)
    assert [p["order_id"] for p in parts["billing"]["data"]["payments"]] == [order_id]
    assert "pseudonymised" in parts["billing"]["data"]["retention"]
    assert parts["privacy"]["data"]["consents"] == {"marketing_email": True, "analytics": False,
                                                  "preferences": False}
    assert [a["version"] for a in parts["privacy"]["data"]["policy_acceptances"]] == [version]
    routes = {e["route"] for e in parts["privacy"]["data"]["access_log"]}
    assert {"/v1/uploads", "/v1/generations", "/v1/privacy/consents"} <= routes
    assert all(e["network"] in ("127.0.0.0/24", None) for e in parts["privacy"]["data"]["access_log"])
    assert {m["template"] for m in parts["notifications"]["data"]["mails"]} >= {
        "email_verification", "receipt"}
    media = {n.rsplit("/", 1)[1].split(".")[0]: hashlib.sha256(contents[n]).hexdigest()
             for n in names if n.startswith("media/")}
    assert media == files  # every file of theirs, byte for byte, and nothing else
    readme = contents["README.md"].decode()
    assert "What is not included, and why" in readme and "password" in readme
    everything = b"".join(contents.values()).lower()
    for foreign in (bystander["id"], bystander["email"], bystander["marker"], bystander["upload"]):
        assert foreign.lower().encode() not in everything, foreign
    files["archive"] = hashlib.sha256(archive.content).hexdigest()

    # ---- erasure
    urls = database_urls(stack)
    wait_for(lambda: query(urls["notifications"], "SELECT count(*) FROM notifications "
                           "WHERE user_id = :u", u=uid) == len(stack.mails_to(address)),
             20, 0.2, "every mail recorded")
    key = api_key(stack, token)
    before = counts_before_erasure(stack, uid)
    assert before["storage_objects"] == len(files), (  # upload, output, the export archive
        query(database_urls(stack)["storage"], "SELECT string_agg(kind || ':' || status || ':' "
              "|| id::text, ', ') FROM objects WHERE owner_id = :u AND deleted_at IS NULL", u=uid))
    # not with an API key, not without the password
    refused = stack.call("POST", "/v1/privacy/requests", api_key=key, json=ERASURE)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "session_required"
    for body in ({"type": "erasure"}, {"type": "erasure", "password": "not my password"}):
        refused = stack.call("POST", "/v1/privacy/requests", token=token, json=body)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "reauthentication_required"
    erasure = call_ok(stack, "POST", "/v1/privacy/requests", 202, token=token, json=ERASURE)
    assert erasure["status"] == "pending" and erasure["starts_at"] > erasure["created_at"]
    assert erasure["due_at"] > erasure["starts_at"]
    scheduled = mail_with(stack, address, "will be erased")
    assert f"/privacy/requests/{erasure['id']}/cancel?token=" in body_text(scheduled)
    # the grace period: still signed in, but no job and no spending
    assert stack.call("GET", "/v1/me", token=token).status_code == 200
    refused = wait_for(lambda: (r := quote(stack, token)).status_code == 403 and r.json(), 20,
                       0.3, "generation to refuse during the grace period")
    assert refused["error"]["code"] == "erasure_pending"
    cert = certificate(stack, erasure["id"])
    # then every session and key revoked
    assert stack.call("GET", "/v1/me", token=token).status_code == 401
    assert stack.call("GET", "/v1/me", api_key=key).status_code == 401

    by_service = {p["service"]: p for p in cert["services"]}
    assert set(by_service) == set(SERVICES)
    assert by_service["storage"]["objects_deleted"] == before["storage_objects"]
    assert by_service["storage"]["bytes_deleted"] == before["storage_bytes"]
    # and the pending-erasure record each of billing and generation kept meanwhile
    assert by_service["billing"]["tables"]["erasure_pending"] == 1
    assert by_service["billing"]["rows_deleted"] == before["billing_deleted"] + 1
    assert by_service["billing"]["rows_pseudonymised"] == before["billing_pseudonymised"] == 2
    assert by_service["generation"]["tables"]["jobs"] == 1
    assert by_service["generation"]["tables"]["erasure_pending"] == 1
    assert by_service["generation"]["rows_deleted"] == before["generation"] + 1
    # and the mail with the cancel link, sent since
    assert by_service["notifications"]["rows_deleted"] == before["notifications"] + 1
    assert by_service["auth"]["tables"]["users"] == 1
    assert by_service["auth"]["rows_deleted"] == before["auth"]
    assert by_service["privacy"]["tables"]["consent_changes"] == before["consent_changes"] == 1
    assert by_service["privacy"]["tables"]["access_logs"] >= before["access_logs"] > 0
    assert cert["totals"]["objects_deleted"] == before["storage_objects"]
    assert uid not in json.dumps(cert) and address not in json.dumps(cert)

    # no trace anywhere, except the pseudonymised payment records. Outboxes
    # hold an event (phase two's request names the user) until the publisher
    # sweeps it, within a second of its publication: give them that.
    needles = [uid, uid.replace("-", ""), address, marker, *files.values()]
    wait_for(lambda: not [t for t in scan_databases(stack, needles) if t[1] == "outbox"], 10,
             0.3, "the outboxes to be swept")
    assert scan_databases(stack, needles) == []
    pseudonymised = query(urls["billing"], "SELECT user_ref FROM orders WHERE id = :o", o=order_id)
    assert pseudonymised.startswith("psn:")
    assert query(urls["billing"], "SELECT count(*) FROM payments WHERE user_ref = :r",
                 r=pseudonymised) == 1
    stored = stored_files(stack)
    assert not [p for p in stored if uid in p]
    assert not set(files.values()) & set(stored.values())
    # the bystander still has everything
    assert scan_databases(stack, [bystander["id"]])
    assert call_ok(stack, "GET", f"/v1/images/{bystander['upload']}",
                   token=bystander["token"])["id"] == bystander["upload"]

    # the schedule actually enforced, from every running service
    retention = call_ok(stack, "GET", "/v1/privacy/retention")
    assert retention["unavailable"] == []
    assert {i["service"] for i in retention["items"]} == set(SERVICES) | {"backups"}
    kept = {(i["service"], i["data"]): i["days"] for i in retention["items"]}
    assert [i["days"] for i in retention["items"] if i["service"] == "backups"] == [186]
    assert any(i["data"].startswith("breach records") for i in retention["items"])
    assert kept[("privacy", "access logs (method, route, status, time, network /24 or /48)")] == 180
    assert kept[("auth", "sessions")] == 7 and kept[("storage", "export archives")] == 7

    # the address is free again
    again = stack.call("POST", "/v1/auth/register", json={"email": address, "password": PASSWORD})
    assert again.status_code == 201, again.text
    assert again.json()["user"]["id"] != uid


def test_the_mailed_link_cancels_an_erasure_without_signing_in(stack):
    address, _, token = verified_login(stack)
    erasure = call_ok(stack, "POST", "/v1/privacy/requests", 202, token=token, json=ERASURE)
    wait_for(lambda: quote(stack, token).status_code == 403, 20, 0.3, "jobs refused")
    link = token_from(mail_with(stack, address, "will be erased"))
    path = f"/v1/privacy/requests/{erasure['id']}/cancel"
    wrong = stack.call("POST", path, json={"token": link[:-2] + "xx"})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "invalid_token"
    cancelled = call_ok(stack, "POST", path, json={"token": link})
    assert cancelled["status"] == "cancelled"
    assert stack.call("POST", path, json={"token": link}).status_code == 400  # used
    wait_for(lambda: quote(stack, token).status_code == 200, 20, 0.3, "jobs allowed again")
    # well past the grace period: still signed in, nothing erased
    time.sleep(8 + 3 + 2)
    assert stack.call("GET", "/v1/me", token=token).status_code == 200
    assert call_ok(stack, "GET", f"/v1/privacy/requests/{erasure['id']}",
                   token=token)["status"] == "cancelled"


def test_a_minors_account_reported_by_a_guardian_is_erased_at_once(stack):
    """`darkroom-ops users delete-minor`: no grace period (8 s here), no cancel
    link; the same fan-out and certificate as an erasure."""
    address, _, token = verified_login(stack)
    assert accounts_with(stack, address) == 1
    asked_at = time.monotonic()
    result = ops(stack, "users", "delete-minor", address, "--yes")
    assert result.returncode == 0, result.stderr
    request_id = result.stdout.split("request ", 1)[1].split(",", 1)[0]
    # its credentials stop working well before a grace period would be over
    wait_for(lambda: stack.call("GET", "/v1/me", token=token).status_code == 401, 7, 0.2,
             "the session revoked")
    assert time.monotonic() - asked_at < 8
    cert = certificate(stack, request_id)
    assert {p["service"] for p in cert["services"]} == set(SERVICES)
    assert [m for m in stack.mails_to(address) if "will be erased" in str(m["Subject"])] == []
    assert accounts_with(stack, address) == 0


def test_a_service_down_during_erasure_delays_it_until_it_returns(stack, start_process):
    address, registered, token = verified_login(stack)
    config = {"AMQP_URI": stack.env["AMQP_URI"], "RPC_TIMEOUT_SECONDS": 30}
    notifications = stack.processes["notifications"]
    notifications.stop()
    try:
        erasure = call_ok(stack, "POST", "/v1/privacy/requests", 202, token=token,
                          json=ERASURE)

        def waiting_for_notifications():
            mine = [r for r in privacy_ops.report(config)["open"] if r["id"] == erasure["id"]]
            return mine and [p["service"] for p in mine[0]["parts"]
                             if p["status"] == "pending"] == ["notifications"]

        wait_for(waiting_for_notifications, 30, 0.5, "every part but notifications")
        assert stack.call("GET", f"/v1/privacy/certificates/{erasure['id']}").status_code == 404
    finally:
        stack.processes["notifications"] = start_process("notifications", stack.env)
    stack.processes["notifications"].wait_ready(
        f"http://127.0.0.1:{stack.env['NOTIFICATIONS_METRICS_PORT']}/readyz")
    cert = certificate(stack, erasure["id"])
    assert {p["service"] for p in cert["services"]} == set(SERVICES)
    assert [p for p in cert["services"] if p["service"] == "auth"][0]["tables"]["users"] == 1
    report = ops(stack, "privacy", "report")
    assert erasure["id"] not in report.stdout
