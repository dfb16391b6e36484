"""The breach workflow through `darkroom-ops breach`, against the real auth,
storage, privacy and notifications services (their Procfile commands), real
RabbitMQ, PostgreSQL and an S3 endpoint; billing and generation, which hold
no breach data, are stood in for only where an erasure asks them.

open → affected (accounts from auth, access logs from privacy) → an affected
user is erased → notify (twice: one mail per remaining user, none to the
erased one) → report (JSON and Markdown) → list. The erasure leaves the
incident and its subject (a keyed hash) in place.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import create_engine, text

from gateway.access_log import AccessLogPublisher, fact
from services.common import privacy_parts as parts
from services.common.db import normalise_url
from services.common.ids import pseudonym
from tests.conftest import REPO, free_port, wait_for
from tests.integration.probe_service import wait_consuming
from tests.integration.test_privacy_service import (
    PrivacyTap,
    answer,
    erasure,
    new_user,
    stack_env,
    stored,
)

pytestmark = pytest.mark.integration

OPS = str(Path(sys.executable).parent / "darkroom-ops")
PSEUDONYM_KEY = "integration-test-pseudonym-key"
NOTICE_QUEUE = "evt-privacy-breach_notice--notifications.breach_notice"


@pytest.fixture(scope="module")
def stack(make_vhost, make_database, start_process, s3_endpoint, tmp_path_factory):
    amqp_uri, _ = make_vhost("breach")
    mail_dir = tmp_path_factory.mktemp("breach-mail")
    ports = {name: free_port() for name in ("auth", "storage", "privacy", "notifications")}
    privacy_db = make_database("privacy")
    env = stack_env(make_database, s3_endpoint, amqp_uri, ports, privacy_db, "breach",
                    NOTIFICATIONS_DATABASE_URL=make_database("notifications"),
                    NOTIFICATIONS_METRICS_PORT=ports["notifications"],
                    MAIL_URL=f"file://{mail_dir}", PRIVACY_PSEUDONYM_KEY=PSEUDONYM_KEY,
                    PRIVACY_PART_TIMEOUT_SECONDS=60, PRIVACY_RPC_TIMEOUT_SECONDS=10,
                    OPS_RPC_TIMEOUT_SECONDS=30)
    tap = PrivacyTap(amqp_uri)
    processes = {name: start_process(name, env) for name in ports}
    for name, port in ports.items():
        processes[name].wait_ready(f"http://127.0.0.1:{port}/readyz")
    wait_consuming(amqp_uri, NOTICE_QUEUE, processes["notifications"])
    engine = create_engine(normalise_url(privacy_db))
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=30) as rpc:
        yield SimpleNamespace(rpc=rpc, tap=tap, amqp_uri=amqp_uri, env=env, engine=engine,
                              mail_dir=mail_dir, processes=processes,
                              metrics=f"http://127.0.0.1:{ports['privacy']}/metrics",
                              dispatch=event_dispatcher({"AMQP_URI": amqp_uri}))
    engine.dispose()
    tap.close()


def ops(stack, *args: str, cwd=REPO) -> subprocess.CompletedProcess:
    result = subprocess.run([OPS, *args], env=stack.env, cwd=cwd, capture_output=True, text=True,
                            timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def notices(stack) -> dict[str, int]:
    """Breach notice mails written, by recipient."""
    found: dict[str, int] = {}
    for path in stack.mail_dir.glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if message["X-Darkroom-Template"] == "breach_notice":
            found[message["To"]] = found.get(message["To"], 0) + 1
    return found


def erase(stack, user: str) -> None:
    """A real erasure of ``user``; billing and generation answer as stand-ins."""
    created = stack.rpc.privacy.create_request(user, erasure(), "session")
    rid = created["id"]
    at = datetime.now(UTC)

    def done(service, recheck=False):
        answer(stack, service, "erasure_completed",
               parts.erasure_result(rid, service, at, at, {"rows": 0}, recheck=recheck))

    wait_for(lambda: stack.tap.events("erasure_requested", request_id=rid), 30, 0.2, "phase one")
    done("generation")
    wait_for(lambda: [e for e in stack.tap.events("erasure_requested", request_id=rid)
                      if "billing" in e["services"]], 30, 0.2, "phase two")
    done("billing")
    wait_for(lambda: [e for e in stack.tap.events("erasure_requested", request_id=rid)
                      if e.get("recheck")], 30, 0.2, "the recheck")
    done("generation", recheck=True)
    wait_for(lambda: stack.rpc.privacy.get_certificate(rid), 30, 0.3, "the certificate")


def test_open_affected_erase_notify_twice_report_list(stack, tmp_path):
    users = [new_user(stack) for _ in range(3)]
    emails = {u: stack.rpc.auth.get_user(u)["email"] for u in users}
    keep_a, keep_b, erased = users
    publisher = AccessLogPublisher(stack.amqp_uri)
    assert publisher.publish([fact("GET", "/v1/me", 200, keep_a, "198.51.100.23"),
                              fact("GET", "/v1/images", 200, keep_a, "198.51.100.23")])
    with stack.engine.connect() as conn:
        wait_for(lambda: conn.execute(text("SELECT count(*) FROM access_logs")).scalar() == 2,
                 15, 0.2, "the access logs stored")
    for _ in range(2):
        stored(stack, keep_b, b"\x89PNG an output", "output", "image/png")

    # bad input: a clear refusal, never a traceback
    bad = ops(stack, "breach", "open", "--summary", "x", "--detected-at", "yesterday-ish",
              "--categories", "account")
    assert bad.returncode == 2 and "--detected-at takes an ISO time" in bad.stderr
    bad = ops(stack, "breach", "affected", "not-an-id", "--from", "1h", "--to", "now")
    assert bad.returncode == 2 and "incident id (a UUID)" in bad.stderr

    detected = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    opened = ops(stack, "breach", "open", "--summary", "API database snapshot exposed",
                 "--detected-at", detected, "--categories", "account,access_logs,images")
    assert opened.returncode == 0, opened.stderr
    incident = re.search(r"incident ([0-9a-f-]{36}) opened", opened.stdout).group(1)
    assert "70 h left" in opened.stdout

    bad = ops(stack, "breach", "notify", incident)
    assert bad.returncode == 1 and "(affected_not_computed)" in bad.stderr

    affected = ops(stack, "breach", "affected", incident, "--from", "1h", "--to", "now")
    assert affected.returncode == 0, affected.stderr
    assert "access_logs 1" in affected.stdout and "storage 1" in affected.stdout
    counts = re.search(r"(\d+) affected users, (\d+) records", affected.stdout)
    assert int(counts.group(1)) >= 3  # other modules' users may share the window: never fewer
    with stack.engine.connect() as conn:
        subjects = {s: u for s, u in conn.execute(text(
            "SELECT subject, user_id FROM breach_subjects WHERE incident_id = :i"),
            {"i": uuid.UUID(incident)})}
    assert {pseudonym(PSEUDONYM_KEY.encode(), u) for u in users} <= set(subjects)

    erase(stack, erased)
    with stack.engine.connect() as conn:
        row = conn.execute(text("SELECT user_id, notice FROM breach_subjects WHERE subject = :s"),
                           {"s": pseudonym(PSEUDONYM_KEY.encode(), erased)}).one()
    assert tuple(row) == (None, "skipped_erased")  # kept, as the hash only

    first = ops(stack, "breach", "notify", incident, "--batch-size", "1")
    assert first.returncode == 0, first.stderr
    assert "skipped (account erased)" in first.stdout
    expected = {emails[keep_a], emails[keep_b]}
    wait_for(lambda: expected <= set(notices(stack)), 30, 0.3, "the notices mailed")
    again = ops(stack, "breach", "notify", incident)
    assert again.returncode == 0 and again.stdout.startswith("0 notices sent now")
    time.sleep(2)  # let a duplicate, if any, arrive
    mailed = notices(stack)
    assert mailed[emails[keep_a]] == mailed[emails[keep_b]] == 1
    assert emails[erased] not in mailed

    out = tmp_path / "reports"
    reported = ops(stack, "breach", "report", incident, "--contact", "dpo@example.com",
                   "--measure", "snapshot deleted", "--measure", "keys rotated",
                   "--out", str(out))
    assert reported.returncode == 0, reported.stderr
    report = json.loads((out / f"breach-{incident}.json").read_text())
    assert report["approximate_people"] == int(counts.group(1))
    assert report["categories"] == ["account", "access_logs", "images"]
    assert report["approximate_records"] >= 3 + 2 + 2  # accounts, access logs, objects
    assert report["measures_taken"] == ["snapshot deleted", "keys rotated"]
    assert report["users_not_notified_erased"] >= 1 and report["users_pending_notice"] == 0
    assert report["reported_within_deadline"] is True
    markdown = (out / f"breach-{incident}.md").read_text()
    for heading in ("Nature of the breach", "Approximate numbers", "Likely consequences",
                    "Measures taken", "Contact point"):
        assert f"## {heading}" in markdown
    assert "dpo@example.com" in markdown
    assert not any(u in markdown or u in json.dumps(report) for u in users)  # no user ids

    listed = ops(stack, "breach", "list", "--json")
    (mine,) = [i for i in json.loads(listed.stdout) if i["id"] == incident]
    assert mine["state"] == "reported" and mine["notices"]["pending"] == 0
    assert mine["affected"] == int(counts.group(1))  # the erasure left the incident whole
    with stack.engine.connect() as conn:
        log = [a for (a,) in conn.execute(text(
            "SELECT action FROM breach_log WHERE incident_id = :i ORDER BY at, id"),
            {"i": uuid.UUID(incident)})]
    assert log[0] == "opened" and "affected_computed" in log and log[-1] == "reported"
    assert "notified" in log


def test_an_incident_open_48_hours_shows_in_the_privacy_report_and_the_metric(stack):
    detected = (datetime.now(UTC) - timedelta(hours=49)).strftime("%Y-%m-%dT%H:%M:%SZ")
    opened = ops(stack, "breach", "open", "--summary", "laptop stolen", "--detected-at",
                 detected, "--categories", "images")
    assert opened.returncode == 0, opened.stderr
    incident = re.search(r"incident ([0-9a-f-]{36}) opened", opened.stdout).group(1)
    report = ops(stack, "privacy", "report")
    assert report.returncode == 1  # an alert on the exit code fires
    assert "breach incidents open 48 hours after detection" in report.stdout
    assert incident in report.stdout
    listed = ops(stack, "breach", "list")
    assert [line for line in listed.stdout.splitlines()
            if line.startswith(incident) and "OVERDUE" in line]
    def gauge():
        for line in requests.get(stack.metrics, timeout=5).text.splitlines():
            if line.startswith("darkroom_privacy_breaches_overdue "):
                return float(line.split()[1])
        return None

    assert wait_for(lambda: (gauge() or 0) >= 1, 10, 0.3, "the metric")
