"""The billing service through its real entrypoint (`nameko run`, the Procfile's
"billing" line) against RabbitMQ, PostgreSQL and the fake Stripe server.

Generation and auth events are published the way their services' dispatchers
publish them (persistent, confirmed, to ``<service>.events``); billing's own
events are captured from ``billing.events`` by a queue bound before anything
happens. The service is called over RPC like the gateway calls it. Time is
moved by editing rows (a hold's age, a lot's expiry, an account's last
monthly grant) and running the timers' work through ``run_maintenance``.
"""

from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace

import pytest
from kombu import Connection, Exchange, Queue
from nameko.standalone.events import get_event_exchange
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text

from services.common import contracts
from services.common.db import make_engine
from services.common.errors import DomainError
from services.common.sealed import Sealer
from tests.conftest import base_env, free_port, wait_for
from tests.fakes.stripe import FakeStripe, event, sign, signed_body
from tests.integration.probe_service import UNVERIFIED_PREFIX, start_fake_auth, wait_consuming

pytestmark = pytest.mark.integration

SECRET = "whsec_test_billing_current"
OLD_SECRET = "whsec_test_billing_previous"
PSEUDONYM_KEY = "test-pseudonym-key-0123456789abcdef"
HANDLERS = {
    ("auth", "user_registered"): "user_registered",
    ("generation", "job_requested"): "job_requested",
    ("generation", "job_succeeded"): "job_succeeded",
    ("generation", "job_failed"): "job_failed",
    ("generation", "job_cancelled"): "job_cancelled",
}


def queue_of(source: str, event_type: str) -> str:
    return f"evt-{source}-{event_type}--billing.{HANDLERS[source, event_type]}"


class EventTap:
    """Every event billing publishes, kept in order of arrival."""

    def __init__(self, amqp_uri: str):
        self.connection = Connection(amqp_uri)
        exchange = get_event_exchange("billing", {})
        self.queue = Queue(f"test-billing-events-{uuid.uuid4().hex[:8]}", exchange=exchange,
                           routing_key="#", exclusive=True, auto_delete=True)(self.connection.channel())
        exchange(self.queue.channel).declare()
        self.queue.declare()
        self.seen: list[tuple[str, dict]] = []

    def _drain(self) -> None:
        while (message := self.queue.get(no_ack=True)) is not None:
            self.seen.append((message.delivery_info["routing_key"], message.payload))

    def of(self, event_type: str, **match) -> list[dict]:
        self._drain()
        return [body for kind, body in self.seen if kind == event_type
                and all(body.get(k) == v for k, v in match.items())]

    def wait(self, event_type: str, count: int = 1, timeout: float = 20, **match) -> list[dict]:
        return wait_for(lambda: (found := self.of(event_type, **match)) and len(found) >= count
                        and found, timeout, 0.1, f"{count} {event_type} {match}")

    def close(self):
        self.connection.release()


def publish(amqp_uri: str, source: str, event_type: str, data: dict | None = None,
            body: dict | None = None) -> dict:
    """Publish an event as its service's dispatcher does (persistent, confirmed)."""
    body = body or contracts.make_event(f"{source}.{event_type}", data)
    exchange = Exchange(f"{source}.events", type="topic", durable=True)
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        conn.Producer().publish(
            json.dumps(body), exchange=exchange, routing_key=event_type, declare=[exchange],
            content_type="application/json", content_encoding="utf-8", delivery_mode=2,
        )
    return body


@pytest.fixture(scope="module")
def billing(make_vhost, make_database, start_process, tmp_path_factory):
    amqp_uri, _ = make_vhost("billing")
    start_fake_auth(start_process, tmp_path_factory.mktemp("fake-auth"), amqp_uri)  # verified users
    db_url = make_database("billing")
    stripe = FakeStripe().start()
    port = free_port()
    env = base_env(
        AMQP_URI=amqp_uri, BILLING_DATABASE_URL=db_url, BILLING_METRICS_PORT=port,
        STRIPE_API_BASE=stripe.api_base, STRIPE_SECRET_KEY=stripe.secret_key,
        STRIPE_WEBHOOK_SECRET=f"{SECRET},{OLD_SECRET}", STRIPE_TIMEOUT_SECONDS=3,
        BILLING_PSEUDONYM_KEY=PSEUDONYM_KEY, OUTBOX_RELAY_INTERVAL_SECONDS=1,
        BILLING_MAX_WORKERS=10,
    )
    tap = EventTap(amqp_uri)

    def start():
        proc = start_process("billing", env)
        proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
        for source, event_type in HANDLERS:
            wait_consuming(amqp_uri, queue_of(source, event_type), proc)
        return proc

    engine = make_engine(db_url)
    state = SimpleNamespace(amqp_uri=amqp_uri, tap=tap, stripe=stripe, engine=engine,
                            start=start, proc=start())
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=30) as rpc:
        wait_for(lambda: rpc.billing.ping(), 30, 0.2, "billing RPC")
        state.rpc = rpc.billing
        yield state
    engine.dispose()
    tap.close()
    stripe.stop()
    state.proc.stop()


# ---------------------------------------------------------------- helpers


def new_user(billing) -> str:
    user = str(uuid.uuid4())
    assert billing.rpc.get_balance(user)["available"] == 50
    return user


def request_job(billing, user: str, price: int, job: str | None = None, attempt: int = 1) -> dict:
    return publish(billing.amqp_uri, "generation", "job_requested", {
        "job_id": job or str(uuid.uuid4()), "user_id": user, "attempt": attempt,
        "type": "text-to-image", "price": price})


def finish_job(billing, user: str, job: str, outcome: str, attempt: int = 1) -> dict:
    data = {"job_id": job, "user_id": user, "attempt": attempt}
    if outcome == "succeeded":
        data["output_ids"] = [str(uuid.uuid4())]
    if outcome == "failed":
        data.update(reason="provider_error", message="the provider failed")
    return publish(billing.amqp_uri, "generation", f"job_{outcome}", data)


def reserved(billing, user: str, price: int) -> str:
    job = request_job(billing, user, price)["job_id"]
    billing.tap.wait("credits_reserved", job_id=job)
    return job


def entries(billing, user: str, kind: str | None = None) -> list[dict]:
    rows = billing.rpc.list_ledger(user, {"limit": 100})["items"]
    return [r for r in reversed(rows) if kind is None or r["kind"] == kind]


def sql(billing, statement: str, **params):
    with billing.engine.begin() as conn:
        return conn.execute(text(statement), params)


def refused(call, *args, **kwargs) -> DomainError:
    with pytest.raises(DomainError) as info:
        call(*args, **kwargs)
    return info.value


def assert_clean(billing, user: str | None = None) -> None:
    assert billing.rpc.verify_ledger(user)["problems"] == []


# ---------------------------------------------------------------- accounts and reads


def test_registration_opens_the_account_once(billing):
    user = str(uuid.uuid4())
    publish(billing.amqp_uri, "auth", "user_registered",
            {"user_id": user, "email": "someone@example.com", "display_name": "S"})
    [changed] = billing.tap.wait("plan_changed", user_id=user)
    assert (changed["plan"], changed["retention_days"]) == ("free", 30)
    balance = billing.rpc.get_balance(user)
    assert (balance["available"], balance["held"], balance["plan"]) == (50, 0, "free")
    assert (balance["granted_this_period"], balance["used_this_period"]) == (50, 0)
    assert balance["period_start"].endswith("01T00:00:00+00:00")
    assert [(e["kind"], e["amount"]) for e in entries(billing, user)] == [("grant", 50)]
    time.sleep(0.5)
    assert len(billing.tap.of("plan_changed", user_id=user)) == 1


def test_reads_and_their_refusals(billing):
    plans = billing.rpc.list_plans()["items"]
    assert [p["id"] for p in plans] == ["free", "pro", "studio"]
    assert plans[0]["price"] is None and plans[1]["price"] == {"amount": 1500, "currency": "usd"}
    prices = billing.rpc.list_prices()
    assert prices["currency"] == "credits" and {p["id"] for p in prices["packs"]} == {"small", "large"}
    assert billing.rpc.quote({"type": "text-to-image", "n": 2, "size": "1024x1024"})["price"] == 8
    for payload in ({"type": "text-to-image", "size": "13x13"}, {"type": "nope"}, None):
        error = refused(billing.rpc.quote, payload)
        assert (error.code, error.status) == ("invalid_request", 400)
    error = refused(billing.rpc.get_balance, "not-a-uuid")
    assert (error.code, error.status) == ("invalid_request", 400)
    error = refused(billing.rpc.list_ledger, str(uuid.uuid4()), {"limit": 500})
    assert error.status == 400


# ---------------------------------------------------------------- the saga


def test_reserve_then_capture(billing):
    user = new_user(billing)
    job = request_job(billing, user, 12)["job_id"]
    [held] = billing.tap.wait("credits_reserved", job_id=job)
    assert (held["amount"], held["plan"], held["priority"], held["attempt"]) == (12, "free", 0, 1)
    assert billing.rpc.get_balance(user)["held"] == 12
    finish_job(billing, user, job, "succeeded")
    [captured] = billing.tap.wait("credits_captured", job_id=job)
    assert captured["amount"] == 12
    balance = billing.rpc.get_balance(user)
    assert (balance["available"], balance["held"], balance["used_this_period"]) == (38, 0, 12)
    assert [(e["kind"], e["amount"], e["held_change"], e["balance_after"])
            for e in entries(billing, user)] == \
        [("grant", 50, 0, 50), ("hold", -12, 12, 38), ("capture", 0, -12, 38)]
    assert_clean(billing, user)


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
def test_reserve_then_release(billing, outcome):
    user = new_user(billing)
    job = reserved(billing, user, 30)
    finish_job(billing, user, job, outcome)
    [released] = billing.tap.wait("credits_released", job_id=job)
    assert (released["amount"], released["reason"]) == (30, outcome)
    assert billing.rpc.get_balance(user)["available"] == 50
    assert_clean(billing, user)


def test_insufficient_credits(billing):
    user = new_user(billing)
    job = request_job(billing, user, 51)["job_id"]
    [short] = billing.tap.wait("credits_insufficient", job_id=job)
    assert (short["required"], short["available"]) == (51, 50)
    finish_job(billing, user, job, "failed")  # nothing to release: nothing happens
    time.sleep(1)
    assert not billing.tap.of("credits_released", job_id=job)
    assert [e["kind"] for e in entries(billing, user)] == ["grant"]


def test_a_duplicate_event_delivered_twice_holds_once(billing):
    user = new_user(billing)
    body = request_job(billing, user, 10)
    publish(billing.amqp_uri, "generation", "job_requested", body=body)  # the same event again
    request_job(billing, user, 10, job=body["job_id"])  # and a new event for the same attempt
    billing.tap.wait("credits_reserved", job_id=body["job_id"])
    done = finish_job(billing, user, body["job_id"], "succeeded")
    publish(billing.amqp_uri, "generation", "job_succeeded", body=done)
    billing.tap.wait("credits_captured", job_id=body["job_id"])
    time.sleep(1.5)
    assert len(billing.tap.of("credits_reserved", job_id=body["job_id"])) == 1
    assert len(billing.tap.of("credits_captured", job_id=body["job_id"])) == 1
    assert [e["kind"] for e in entries(billing, user)] == ["grant", "hold", "capture"]
    assert_clean(billing, user)


def test_many_holds_consumed_at_once_never_overdraw(billing):
    user = new_user(billing)
    jobs = [request_job(billing, user, 10)["job_id"] for _ in range(20)]

    def answered():
        return sum(len(billing.tap.of(kind, user_id=user))
                   for kind in ("credits_reserved", "credits_insufficient")) == len(jobs)

    wait_for(answered, 30, 0.2, "an answer for every job")
    assert len(billing.tap.of("credits_reserved", user_id=user)) == 5
    assert len(billing.tap.of("credits_insufficient", user_id=user)) == 15
    balance = billing.rpc.get_balance(user)
    assert (balance["available"], balance["held"]) == (0, 50)
    assert_clean(billing, user)


def test_a_crash_between_hold_and_capture_captures_exactly_once(billing):
    user = new_user(billing)
    job = reserved(billing, user, 9)
    billing.proc.kill()  # SIGKILL: no goodbye
    done = finish_job(billing, user, job, "succeeded")
    publish(billing.amqp_uri, "generation", "job_succeeded", body=done)
    finish_job(billing, user, job, "succeeded")  # a second event for the same attempt
    billing.proc = billing.start()
    billing.tap.wait("credits_captured", job_id=job, timeout=30)
    time.sleep(1.5)
    assert len(billing.tap.of("credits_captured", job_id=job)) == 1
    assert [e["kind"] for e in entries(billing, user)] == ["grant", "hold", "capture"]
    assert billing.rpc.get_balance(user)["available"] == 41
    assert_clean(billing, user)


def test_a_crash_in_the_middle_of_many_holds_loses_and_doubles_nothing(billing):
    user = new_user(billing)
    jobs = [request_job(billing, user, 1)["job_id"] for _ in range(30)]
    billing.proc.kill()
    billing.proc = billing.start()
    for job in jobs:
        billing.tap.wait("credits_reserved", job_id=job, timeout=30)
    assert len(entries(billing, user, "hold")) == 30
    assert billing.rpc.get_balance(user)["held"] == 30
    assert_clean(billing, user)


def test_a_replayed_job_is_held_again_and_captured_once(billing):
    user = new_user(billing)
    job = reserved(billing, user, 10)
    finish_job(billing, user, job, "failed")
    billing.tap.wait("credits_released", job_id=job)
    request_job(billing, user, 10, job=job, attempt=2)
    billing.tap.wait("credits_reserved", job_id=job, attempt=2)
    finish_job(billing, user, job, "succeeded", attempt=2)
    billing.tap.wait("credits_captured", job_id=job, attempt=2)
    assert billing.rpc.get_balance(user)["available"] == 40
    assert [e["kind"] for e in entries(billing, user)] == \
        ["grant", "hold", "release", "hold", "capture"]


def test_a_forgotten_hold_expires_and_a_late_success_is_still_paid_for(billing):
    user = new_user(billing)
    job = reserved(billing, user, 8)
    [hold] = billing.tap.wait("credits_reserved", job_id=job)
    assert hold["hold_expires_at"]  # generation does not start the job after it
    sql(billing, "UPDATE holds SET created_at = created_at - interval '7 hours' WHERE job_id = :j",
        j=uuid.UUID(job))
    assert billing.rpc.run_maintenance(["holds"]) == {"holds": 1}
    assert billing.rpc.run_maintenance(["holds"]) == {"holds": 0}
    [released] = billing.tap.wait("credits_released", job_id=job)
    assert released["reason"] == "expired"
    assert billing.rpc.get_balance(user)["available"] == 50
    # a success sent just before the expiry arrives after it: not free
    finish_job(billing, user, job, "succeeded")
    [captured] = billing.tap.wait("credits_captured", job_id=job)
    assert captured["amount"] == 8
    balance = billing.rpc.get_balance(user)
    assert (balance["available"], balance["held"], balance["used_this_period"]) == (42, 0, 8)
    assert [(e["kind"], e["amount"]) for e in entries(billing, user)][-1] == ("capture", -8)
    assert_clean(billing, user)


# ---------------------------------------------------------------- lots and grants


def test_holds_take_the_credits_expiring_first_and_expired_ones_go(billing):
    user = new_user(billing)
    billing.rpc.adjust(user, 40, "goodwill, never expires", "lot-test-1")
    # the signup lot now expires in an hour
    sql(billing, "UPDATE lots SET expires_at = now() + interval '1 hour' "
                 "WHERE user_id = :u AND source = 'grant'", u=uuid.UUID(user))
    reserved(billing, user, 60)  # 50 from the signup lot first, then 10 of the 40
    rows = sql(billing, "SELECT l.source, -m.amount FROM lot_movements m JOIN lots l "
                        "ON l.id = m.lot_id JOIN ledger_entries e ON e.id = m.entry_id "
                        "WHERE e.user_id = :u AND e.kind = 'hold' ORDER BY l.source",
               u=uuid.UUID(user)).all()
    assert [tuple(r) for r in rows] == [("adjustment", 10), ("grant", 50)]
    # expiry: lots past their time lose what is left, once
    user2 = new_user(billing)
    billing.rpc.adjust(user2, 5, "kept", "lot-test-2")
    sql(billing, "UPDATE lots SET expires_at = now() - interval '1 minute' "
                 "WHERE user_id = :u AND source = 'grant'", u=uuid.UUID(user2))
    assert billing.rpc.get_balance(user2)["available"] == 5  # already hidden from reads
    assert billing.rpc.run_maintenance(["lots"])["lots"] >= 1
    billing.rpc.run_maintenance(["lots"])
    assert [(e["kind"], e["amount"]) for e in entries(billing, user2)] == \
        [("grant", 50), ("adjustment", 5), ("expire", -50)]
    assert_clean(billing, user2)


def test_the_monthly_grant_is_given_once_however_often_the_timer_runs(billing):
    user = new_user(billing)  # the signup month is covered by the signup grant
    before = billing.rpc.run_maintenance(["grants"])["grants"]
    assert [e["kind"] for e in entries(billing, user)] == ["grant"]
    assert before >= 0
    sql(billing, "UPDATE accounts SET granted_period = '2000-01' WHERE user_id = :u",
        u=uuid.UUID(user))
    assert billing.rpc.run_maintenance(["grants"])["grants"] == 1
    assert billing.rpc.run_maintenance(["grants"])["grants"] == 0
    sql(billing, "UPDATE accounts SET granted_period = '2000-01' WHERE user_id = :u",
        u=uuid.UUID(user))
    assert billing.rpc.run_maintenance(["grants"])["grants"] == 0  # the unique key holds
    grants = entries(billing, user, "grant")
    assert [g["amount"] for g in grants] == [50, 20]
    assert grants[1]["expires_at"] == billing.rpc.get_balance(user)["period_end"]
    assert_clean(billing, user)


# ---------------------------------------------------------------- the audit


def test_verify_ledger_finds_a_ledger_corrupted_on_purpose(billing):
    user = new_user(billing)
    job = reserved(billing, user, 5)
    finish_job(billing, user, job, "succeeded")
    billing.tap.wait("credits_captured", job_id=job)
    assert_clean(billing, user)
    sql(billing, "UPDATE ledger_entries SET amount = -4 WHERE job_id = :j AND kind = 'hold'",
        j=uuid.UUID(job))
    sql(billing, "UPDATE accounts SET held = 3 WHERE user_id = :u", u=uuid.UUID(user))
    found = billing.rpc.verify_ledger(user)
    kinds = {p["problem"].split(":")[0] for p in found["problems"]}
    assert {"available_mismatch", "held_mismatch", "held_vs_open_holds", "balance_after_chain",
            "entry_movements_mismatch"} <= kinds
    assert all(p["user_id"] == user for p in found["problems"])
    mismatch = next(p for p in found["problems"] if p["problem"] == "available_mismatch")
    assert (mismatch["expected"], mismatch["actual"]) == (46, 45)
    everyone = billing.rpc.verify_ledger()
    assert everyone["accounts_checked"] > 1 and len(everyone["problems"]) == len(found["problems"])
    # put it back, so the other tests' audits stay meaningful
    sql(billing, "UPDATE ledger_entries SET amount = -5 WHERE job_id = :j AND kind = 'hold'",
        j=uuid.UUID(job))
    sql(billing, "UPDATE accounts SET held = 0 WHERE user_id = :u", u=uuid.UUID(user))
    assert_clean(billing)


# ---------------------------------------------------------------- payments


def checkout(billing, user: str, payload: dict, key: str | None = None) -> dict:
    answer = billing.rpc.create_checkout(user, payload, key)
    assert answer["checkout_url"].startswith("https://checkout.stripe.test/")
    return answer


def webhook(billing, evt: dict, secret: str = SECRET, timestamp: int | None = None) -> dict:
    body, header = signed_body(evt, secret, timestamp)
    return billing.rpc.handle_stripe_webhook(body, header)


def order_of(billing, user: str, order_id: str) -> dict:
    return next(o for o in billing.rpc.list_orders(user)["items"] if o["id"] == order_id)


def test_checkout_against_stripe_and_the_paid_webhook(billing):
    user = new_user(billing)
    answer = checkout(billing, user, {"pack_id": "small"}, key="buy-1")
    session = billing.stripe.session_for_order(answer["order_id"])
    sent = billing.stripe.requests[-1]
    assert sent.headers["Authorization"] == f"Bearer {billing.stripe.secret_key}"
    assert sent.headers["Idempotency-Key"] == f"order:{answer['order_id']}"
    assert (sent.form["mode"], sent.form["line_items[0][price_data][unit_amount]"],
            sent.form["metadata[order_id]"]) == ("payment", "500", answer["order_id"])
    assert checkout(billing, user, {"pack_id": "small"}, key="buy-1") == answer
    error = refused(billing.rpc.create_checkout, user, {"pack_id": "large"}, "buy-1")
    assert (error.code, error.status) == ("idempotency_key_reused", 409)
    assert order_of(billing, user, answer["order_id"])["status"] == "pending"

    completed = billing.stripe.checkout_completed(session["id"])
    assert webhook(billing, completed) == {"received": True, "duplicate": False}
    assert webhook(billing, completed) == {"received": True, "duplicate": True}
    [paid] = billing.tap.wait("order_paid", order_id=answer["order_id"])
    assert (paid["kind"], paid["item_id"], paid["credits"], paid["amount"], paid["currency"]) == \
        ("pack", "small", 100, 500, "usd")
    order = order_of(billing, user, answer["order_id"])
    assert (order["status"], order["credits"]) == ("paid", 100)
    assert billing.rpc.get_balance(user)["available"] == 150
    assert [e["kind"] for e in entries(billing, user)] == ["grant", "purchase"]
    time.sleep(1)
    assert len(billing.tap.of("order_paid", order_id=answer["order_id"])) == 1
    assert_clean(billing, user)


@pytest.mark.parametrize("payload, code, status", [
    ({"pack_id": "gigantic"}, "not_found", 404),
    ({"plan_id": "platinum"}, "not_found", 404),
    ({"plan_id": "free"}, "conflict", 409),
    ({"pack_id": "small", "plan_id": "pro"}, "invalid_request", 400),
    ({}, "invalid_request", 400),
])
def test_checkout_refusals(billing, payload, code, status):
    error = refused(billing.rpc.create_checkout, new_user(billing), payload)
    assert (error.code, error.status) == (code, status)


def test_a_checkout_needs_a_verified_address_whoever_calls(billing):
    """Not only the gateway's rule: the RPC itself refuses, and opens no order."""
    user = UNVERIFIED_PREFIX + str(uuid.uuid4())[len(UNVERIFIED_PREFIX):]
    sent = len(billing.stripe.requests)
    for payload in ({"pack_id": "small"}, {"plan_id": "pro"}):
        error = refused(billing.rpc.create_checkout, user, payload, "unverified-1")
        assert (error.code, error.status) == ("email_unverified", 403)
    assert billing.rpc.list_orders(user)["items"] == []
    assert len(billing.stripe.requests) == sent


def test_a_paid_plan_and_the_current_plan_conflict(billing):
    user = new_user(billing)
    answer = checkout(billing, user, {"plan_id": "pro"})
    session = billing.stripe.session_for_order(answer["order_id"])
    for paid in billing.stripe.complete_subscription(session["id"]):  # a subscription
        webhook(billing, paid)
    billing.tap.wait("plan_changed", user_id=user, plan="pro")
    balance = billing.rpc.get_balance(user)
    assert (balance["plan"], balance["available"]) == ("pro", 550)
    assert balance["plan_expires_at"] is not None
    error = refused(billing.rpc.create_checkout, user, {"plan_id": "pro"})
    assert (error.code, error.status) == ("conflict", 409)
    held = billing.tap.wait("credits_reserved", job_id=reserved(billing, user, 1))[0]
    assert (held["plan"], held["priority"]) == ("pro", 5)


def test_the_provider_down_fails_the_order_with_503(billing):
    user = new_user(billing)
    billing.stripe.fail_next(500)
    error = refused(billing.rpc.create_checkout, user, {"pack_id": "small"}, "down-1")
    assert (error.code, error.status) == ("payment_provider_unavailable", 503)
    [order] = billing.rpc.list_orders(user)["items"]
    assert order["status"] == "failed"
    # the same request again, once Stripe is back, pays that same order
    answer = checkout(billing, user, {"pack_id": "small"}, key="down-1")
    assert answer["order_id"] == order["id"]
    assert order_of(billing, user, order["id"])["status"] == "pending"


def test_the_provider_unreachable_fails_the_order_with_503(billing):
    user = new_user(billing)
    billing.stripe.delay_seconds = 5  # longer than STRIPE_TIMEOUT_SECONDS
    try:
        error = refused(billing.rpc.create_checkout, user, {"plan_id": "studio"})
    finally:
        billing.stripe.delay_seconds = 0
    assert (error.code, error.status) == ("payment_provider_unavailable", 503)
    assert [o["status"] for o in billing.rpc.list_orders(user)["items"]] == ["failed"]


def test_webhook_signature_failures(billing):
    evt = event("checkout.session.completed", {"id": "cs_test_none", "payment_status": "paid"})
    body, header = signed_body(evt, SECRET)
    cases = [
        (body, None, "missing"),
        (body, sign(body, "whsec_attacker"), "mismatch"),
        (body, sign(body, SECRET, int(time.time()) - 301), "stale"),
        (body.replace("cs_test_none", "cs_test_else"), header, "mismatch"),
        (body, "t=abc", "malformed"),
    ]
    for payload, signature, reason in cases:
        error = refused(billing.rpc.handle_stripe_webhook, payload, signature)
        assert (error.code, error.status, error.details["reason"]) == \
            ("invalid_signature", 400, reason)
    # the previous secret still verifies (rotation); a signed non-JSON body is a bad request
    assert webhook(billing, event("customer.created", {"id": "cus_1"}), OLD_SECRET)["received"]
    error = refused(billing.rpc.handle_stripe_webhook, "{oops", sign("{oops", SECRET))
    assert (error.code, error.status) == ("invalid_request", 400)
    error = refused(billing.rpc.handle_stripe_webhook, 42, "t=1,v1=ab")
    assert (error.code, error.status) == ("invalid_request", 400)


def test_a_refund_after_partial_spend_reverses_only_what_is_left(billing):
    user = new_user(billing)
    answer = checkout(billing, user, {"pack_id": "small"})  # 100 credits for 500
    session = billing.stripe.session_for_order(answer["order_id"])
    webhook(billing, billing.stripe.checkout_completed(session["id"]))
    job = reserved(billing, user, 120)  # the 50 signup credits, then 70 of the pack
    finish_job(billing, user, job, "succeeded")
    billing.tap.wait("credits_captured", job_id=job)
    refund = billing.stripe.charge_refunded(session["id"], 500)
    webhook(billing, refund)
    assert webhook(billing, refund)["duplicate"] is True
    [refunded] = billing.tap.wait("order_refunded", order_id=answer["order_id"])
    assert (refunded["credits_reversed"], refunded["amount_refunded"], refunded["status"]) == \
        (30, 500, "refunded")
    order = order_of(billing, user, answer["order_id"])
    assert (order["status"], order["amount_refunded"]) == ("refunded", 500)
    assert billing.rpc.get_balance(user)["available"] == 0
    assert [(e["kind"], e["amount"]) for e in entries(billing, user)][-1] == ("refund", -30)
    assert_clean(billing, user)


def paid_pack(billing, user: str) -> tuple[dict, dict]:
    answer = checkout(billing, user, {"pack_id": "small"})  # 100 credits for 500
    session = billing.stripe.session_for_order(answer["order_id"])
    webhook(billing, billing.stripe.checkout_completed(session["id"]))
    billing.tap.wait("order_paid", order_id=answer["order_id"])
    return answer, session


def test_a_refund_while_credits_are_held_takes_them_when_released(billing):
    user = new_user(billing)
    answer, session = paid_pack(billing, user)
    failing = reserved(billing, user, 60)  # the 50 signup credits, then 10 of the pack
    succeeding = reserved(billing, user, 20)  # 20 of the pack
    webhook(billing, billing.stripe.charge_refunded(session["id"], 500))
    [refunded] = billing.tap.wait("order_refunded", order_id=answer["order_id"])
    assert refunded["credits_reversed"] == 70  # the unspent part; 30 are held
    assert (billing.rpc.get_balance(user)["available"], billing.rpc.get_balance(user)["held"]) \
        == (0, 80)
    assert_clean(billing, user)
    # what the succeeding job captures stays spent
    finish_job(billing, user, succeeding, "succeeded")
    billing.tap.wait("credits_captured", job_id=succeeding)
    # the failing job's 10 of the pack are taken instead of coming back
    finish_job(billing, user, failing, "failed")
    billing.tap.wait("credits_released", job_id=failing)
    balance = billing.rpc.get_balance(user)
    assert (balance["available"], balance["held"]) == (50, 0)
    assert [(e["kind"], e["amount"]) for e in entries(billing, user)][-2:] == \
        [("release", 60), ("refund", -10)]
    assert billing.rpc.verify_ledger()["problems"] == []


def test_a_dispute_freezes_the_credits_and_a_lost_one_takes_them_back(billing):
    user = new_user(billing)
    answer, session = paid_pack(billing, user)
    opened = billing.stripe.dispute(session["id"], dispute_id="dp_test_lost")
    assert webhook(billing, opened) == {"received": True, "duplicate": False}
    assert webhook(billing, opened)["duplicate"] is True
    balance = billing.rpc.get_balance(user)
    assert (balance["available"], balance["frozen"]) == (50, 100)
    assert order_of(billing, user, answer["order_id"])["dispute_status"] == "open"
    job = request_job(billing, user, 60)["job_id"]  # more than the unfrozen 50
    [short] = billing.tap.wait("credits_insufficient", job_id=job)
    assert (short["required"], short["available"]) == (60, 50)
    webhook(billing, billing.stripe.dispute(session["id"], closed_as="lost",
                                            dispute_id="dp_test_lost"))
    balance = billing.rpc.get_balance(user)
    assert (balance["available"], balance["frozen"]) == (50, 0)
    assert order_of(billing, user, answer["order_id"])["dispute_status"] == "lost"
    assert [(e["kind"], e["amount"]) for e in entries(billing, user)][-1] == ("refund", -100)
    assert_clean(billing, user)


def test_a_won_dispute_restores_the_credits(billing):
    user = new_user(billing)
    answer, session = paid_pack(billing, user)
    webhook(billing, billing.stripe.dispute(session["id"], dispute_id="dp_test_won"))
    assert billing.rpc.get_balance(user)["frozen"] == 100
    webhook(billing, billing.stripe.dispute(session["id"], closed_as="won",
                                            dispute_id="dp_test_won"))
    balance = billing.rpc.get_balance(user)
    assert (balance["available"], balance["frozen"]) == (150, 0)
    assert order_of(billing, user, answer["order_id"])["dispute_status"] == "won"
    job = reserved(billing, user, 150)
    assert billing.tap.of("credits_reserved", job_id=job)
    assert_clean(billing, user)


def privacy_part(billing, kind: str, user: str) -> dict:
    """Billing's answer to a privacy request (``export`` or ``erasure``) for
    ``user``, asked by event as the privacy service asks it."""
    wait_consuming(billing.amqp_uri, f"evt-privacy-{kind}_requested--billing.privacy_{kind}"
                   "_requested", billing.proc)
    request_id = str(uuid.uuid4())
    publish(billing.amqp_uri, "privacy", f"{kind}_requested",
            {"request_id": request_id, "user_id": user, "services": ["billing"]})
    answer = "export_part_ready" if kind == "export" else "erasure_completed"
    [event] = billing.tap.wait(answer, request_id=request_id)
    return event


def test_export_and_erase_with_pseudonymised_payments(billing):
    user = new_user(billing)
    answer = checkout(billing, user, {"pack_id": "small"})
    session = billing.stripe.session_for_order(answer["order_id"])
    webhook(billing, billing.stripe.checkout_completed(session["id"]))
    reserved(billing, user, 3)
    exported = privacy_part(billing, "export", user)["data"]
    assert exported["account"]["available"] == 147
    assert [e["kind"] for e in exported["ledger"]] == ["grant", "purchase", "hold"]
    assert len(exported["lots"]) == 2 and len(exported["holds"]) == 1
    assert exported["orders"][0]["id"] == answer["order_id"]
    assert exported["payments"][0]["amount"] == 500
    assert "5 years" in exported["retention"]

    counts = privacy_part(billing, "erasure", user)
    assert counts["rows_pseudonymised"] == 2 and counts["rows_deleted"] >= 9
    again = privacy_part(billing, "erasure", user)
    assert (again["rows_deleted"], again["rows_pseudonymised"]) == (0, 0)
    uid = uuid.UUID(user)
    for table in ("accounts", "ledger_entries", "lots", "lot_movements", "holds"):
        assert sql(billing, f"SELECT count(*) FROM {table} WHERE user_id = :u", u=uid).scalar() == 0
    refs = sql(billing, "SELECT user_ref, retain_until > now() + interval '1800 days' FROM payments "
                        "WHERE order_id = :o", o=uuid.UUID(answer["order_id"])).one()
    assert refs[0].startswith("psn:") and len(refs[0]) == 68 and refs[1]
    assert sql(billing, "SELECT count(*) FROM orders WHERE user_ref = :u", u=user).scalar() == 0
    error = refused(billing.rpc.get_balance, user)
    assert (error.code, error.status) == ("not_found", 404)
    assert billing.rpc.list_orders(user)["items"] == []
    # a late event for the erased user is answered, and reopens nothing
    late = request_job(billing, user, 1)["job_id"]
    billing.tap.wait("credits_insufficient", job_id=late)
    assert sql(billing, "SELECT count(*) FROM accounts WHERE user_id = :u", u=uid).scalar() == 0


def test_no_credit_is_held_while_an_erasure_is_pending(billing):
    """privacy.erasure_scheduled: a job is refused as not payable, nothing is
    spent; privacy.erasure_cancelled: holds again."""
    user = new_user(billing)
    for event_type in ("erasure_scheduled", "erasure_cancelled"):
        wait_consuming(billing.amqp_uri, f"evt-privacy-{event_type}--billing.privacy_{event_type}",
                       billing.proc)
    request_id = str(uuid.uuid4())
    publish(billing.amqp_uri, "privacy", "erasure_scheduled", {
        "request_id": request_id, "user_id": user, "starts_at": "2026-12-06T09:00:00Z",
        "sealed_cancel_token": Sealer("integration-test-mail-secrets-key").seal("t" * 43)})
    pending = "SELECT pending FROM erasure_pending WHERE user_id = :u"
    wait_for(lambda: sql(billing, pending, u=uuid.UUID(user)).scalar() is True, 20, 0.1,
             "the pending erasure recorded")
    job = request_job(billing, user, 5)["job_id"]
    [short] = billing.tap.wait("credits_insufficient", job_id=job)
    assert (short["required"], short["available"]) == (5, 0)
    assert not billing.tap.of("credits_reserved", job_id=job)
    assert [e["kind"] for e in entries(billing, user)] == ["grant"]
    assert billing.rpc.get_balance(user)["available"] == 50
    publish(billing.amqp_uri, "privacy", "erasure_cancelled",
            {"request_id": request_id, "user_id": user})
    wait_for(lambda: sql(billing, pending, u=uuid.UUID(user)).scalar() is False, 20, 0.1,
             "the cancellation recorded")
    reserved(billing, user, 5)
