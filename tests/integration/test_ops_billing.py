"""`darkroom-ops billing verify|adjust` against the real billing service (its
Procfile command, PostgreSQL, RabbitMQ): accounts opened by
``auth.user_registered`` events, adjustments made and retried, and a ledger
corrupted on purpose in SQL that ``verify`` must catch."""

from __future__ import annotations

import json
import uuid

import pytest
from kombu import Connection, Exchange
from sqlalchemy import text
from sqlalchemy.orm import Session

from ops import rpc
from services.common import contracts
from services.common.db import make_engine
from services.common.errors import DomainError
from tests.conftest import base_env, free_port, wait_for
from tests.integration.probe_service import wait_consuming
from tests.integration.test_billing_audit_pages import consistent_ledger, write
from tests.integration.test_ops_users import ops

pytestmark = pytest.mark.integration

SIGNUP_GRANT = 50  # deploy/config/billing.yaml, the free plan


def register(amqp_uri: str, user_id: str) -> None:
    """``auth.user_registered`` as auth publishes it: billing opens the account."""
    body = contracts.make_event("auth.user_registered",
                                {"user_id": user_id, "email": f"{user_id[:8]}@example.com"})
    exchange = Exchange("auth.events", type="topic", durable=True)
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        conn.Producer().publish(json.dumps(body), exchange=exchange, routing_key="user_registered",
                                declare=[exchange], content_type="application/json",
                                content_encoding="utf-8", delivery_mode=2)


class Billing:
    def __init__(self, amqp_uri: str, database_url: str):
        self.amqp_uri = amqp_uri
        self.engine = make_engine(database_url)
        self.env = base_env(AMQP_URI=amqp_uri, OPS_RPC_TIMEOUT_SECONDS=20)

    def sql(self, statement: str, **params):
        with self.engine.begin() as conn:
            return conn.execute(text(statement), params)

    def available(self, user_id: str) -> int | None:
        return self.sql("SELECT available FROM accounts WHERE user_id = :u",
                        u=uuid.UUID(user_id)).scalar()


@pytest.fixture(scope="module")
def billing(make_vhost, make_database, start_process):
    amqp_uri, _ = make_vhost("ops-billing")
    database_url = make_database("billing")
    port = free_port()
    proc = start_process("billing", base_env(AMQP_URI=amqp_uri, BILLING_DATABASE_URL=database_url,
                                             BILLING_METRICS_PORT=port))
    proc.wait_ready(f"http://127.0.0.1:{port}/readyz")
    wait_consuming(amqp_uri, "rpc-billing", proc)
    wait_consuming(amqp_uri, "evt-auth-user_registered--billing.user_registered", proc)
    service = Billing(amqp_uri, database_url)
    yield service
    service.engine.dispose()


@pytest.fixture(scope="module")
def users(billing):
    ada, bob = str(uuid.uuid4()), str(uuid.uuid4())
    for user_id in (ada, bob):
        register(billing.amqp_uri, user_id)
    for user_id in (ada, bob):
        wait_for(lambda u=user_id: billing.available(u) == SIGNUP_GRANT, 20, 0.2,
                 f"the account of {user_id}")
    return ada, bob


def test_verify_then_adjust_and_retry(billing, users):
    ada, bob = users
    result = ops(billing.env, "billing", "verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "checked 2 accounts: the ledger is consistent\n"

    args = ("billing", "adjust", "--user", ada, "--credits", "25", "--reason",
            "goodwill: failed render", "--idempotency-key", "TICKET-1")
    first = ops(billing.env, *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"credited 25 credits to user {ada}: available now 75 (entry ")
    again = ops(billing.env, *args)  # a retry of the same command credits nothing more
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    assert billing.available(ada) == 75
    [(kind, amount, reason)] = billing.sql(
        "SELECT kind, amount, reason FROM ledger_entries WHERE user_id = :u AND kind = 'adjustment'",
        u=uuid.UUID(ada)).all()
    assert (kind, amount, reason) == ("adjustment", 25, "goodwill: failed render")

    debit = ops(billing.env, "billing", "adjust", "--user", bob, "--credits", "-20", "--reason",
                "double grant")
    assert debit.returncode == 0, debit.stderr
    assert f"debited 20 credits from user {bob}: available now 30" in debit.stdout
    assert ops(billing.env, "billing", "verify").returncode == 0


def test_adjust_refusals(billing, users):
    ada, bob = users
    too_much = ops(billing.env, "billing", "adjust", "--user", bob, "--credits", "-100000",
                   "--reason", "x")
    assert too_much.returncode == 1
    assert "(insufficient_credits)" in too_much.stderr and "Traceback" not in too_much.stderr

    ops(billing.env, "billing", "adjust", "--user", ada, "--credits", "1", "--reason", "y",
        "--idempotency-key", "TICKET-2")
    reused = ops(billing.env, "billing", "adjust", "--user", ada, "--credits", "2", "--reason", "y",
                 "--idempotency-key", "TICKET-2")
    assert reused.returncode == 1
    assert "(idempotency_key_reused)" in reused.stderr

    malformed = ops(billing.env, "billing", "adjust", "--user", "ada", "--credits", "1",
                    "--reason", "x")
    assert malformed.returncode == 2 and "not a user id" in malformed.stderr


def test_verify_finds_a_ledger_corrupted_in_sql(billing, users):
    ada, bob = users
    assert ops(billing.env, "billing", "verify").returncode == 0
    # someone "fixes" a balance by hand, and edits an entry of another account
    billing.sql("UPDATE accounts SET available = available + 1000 WHERE user_id = :u",
                u=uuid.UUID(ada))
    billing.sql("UPDATE ledger_entries SET balance_after = balance_after + 7 WHERE id = ("
                "SELECT id FROM ledger_entries WHERE user_id = :u ORDER BY seq LIMIT 1)",
                u=uuid.UUID(bob))
    try:
        result = ops(billing.env, "billing", "verify")
        assert result.returncode == 1, result.stdout
        lines = result.stdout.splitlines()
        assert lines[0].startswith("checked 2 accounts: ") and lines[0].endswith("found")
        assert lines[1].split() == ["USER", "PROBLEM", "EXPECTED", "ACTUAL"]
        ada_rows = [line.split() for line in lines[2:] if line.startswith(ada)]
        assert ada_rows and {row[1] for row in ada_rows} >= {"available_mismatch"}
        assert any(line.startswith(bob) for line in lines[2:])
        assert "Traceback" not in result.stderr

        as_json = ops(billing.env, "billing", "verify", "--json")
        assert as_json.returncode == 1
        found = json.loads(as_json.stdout)
        assert found["accounts_checked"] == 2
        mismatch = next(p for p in found["problems"]
                        if p["user_id"] == ada and p["problem"] == "available_mismatch")
        assert int(mismatch["actual"]) - int(mismatch["expected"]) == 1000

        only_bob = ops(billing.env, "billing", "verify", "--user", bob)
        assert only_bob.returncode == 1
        assert only_bob.stdout.startswith("checked 1 account: ")
        assert ada not in only_bob.stdout
    finally:  # put the ledger back for whoever comes next
        billing.sql("UPDATE accounts SET available = available - 1000 WHERE user_id = :u",
                    u=uuid.UUID(ada))
        billing.sql("UPDATE ledger_entries SET balance_after = balance_after - 7 WHERE id = ("
                    "SELECT id FROM ledger_entries WHERE user_id = :u ORDER BY seq LIMIT 1)",
                    u=uuid.UUID(bob))
    assert ops(billing.env, "billing", "verify").returncode == 0


def test_verify_walks_a_large_ledger_page_by_page(billing, users):
    """1 200 more accounts: three pages of the CLI's 500; a problem on the last
    page is found; the paged RPC refuses a cursor it did not make."""
    extra = sorted(uuid.uuid4() for _ in range(1200))
    with Session(billing.engine) as db:
        write(db, consistent_ledger(extra, debits=3))
    try:
        result = ops(billing.env, "billing", "verify", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"accounts_checked": 1202, "problems": []}

        last = max([*extra, *(uuid.UUID(u) for u in users)])
        billing.sql("UPDATE accounts SET held = 3 WHERE user_id = :u", u=last)
        result = ops(billing.env, "billing", "verify", "--json")
        assert result.returncode == 1
        found = json.loads(result.stdout)
        assert found["accounts_checked"] == 1202
        assert {(p["user_id"], p["problem"]) for p in found["problems"]} == \
            {(str(last), "held_mismatch"), (str(last), "held_vs_open_holds")}
        billing.sql("UPDATE accounts SET held = 0 WHERE user_id = :u", u=last)

        config = {"AMQP_URI": billing.amqp_uri, "RPC_TIMEOUT_SECONDS": 20}
        for args in ((users[0], 10), (None, None, "x"), (None, 10, "bm90IGEgY3Vyc29y"),
                     (None, 0)):
            with pytest.raises(DomainError) as refused:
                rpc.call(config, "billing", "verify_ledger", *args)
            assert refused.value.code == "invalid_request", args
    finally:
        for table in ("lot_movements", "ledger_entries", "lots", "accounts"):
            billing.sql(f"DELETE FROM {table} WHERE user_id = ANY(:users)", users=extra)
    assert json.loads(ops(billing.env, "billing", "verify", "--json").stdout)["accounts_checked"] == 2


def test_no_billing_service_is_a_clear_error(make_vhost):
    amqp_uri, _ = make_vhost("ops-no-billing")
    result = ops(base_env(AMQP_URI=amqp_uri, OPS_RPC_TIMEOUT_SECONDS=5), "billing", "verify")
    assert result.returncode == 1
    assert "error: no billing service is running" in result.stderr
    assert "Traceback" not in result.stderr
