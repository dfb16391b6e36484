"""`darkroom-ops billing verify|adjust|refund`: arguments, RPC calls, output, exit
codes (the RPC replaced by a fake; tests/integration/test_ops_billing.py runs
them against the real billing service)."""

from __future__ import annotations

import json

import pytest

from ops import billing as billing_ops
from ops.errors import OpsError
from services.common.errors import DomainError
from tests.unit.ops.conftest import Calls

ADA = "0190a0a0-0000-7000-8000-000000000001"
BOB = "0190a0a0-0000-7000-8000-000000000002"
PROBLEMS = [
    {"user_id": ADA, "problem": "available_mismatch", "expected": 70, "actual": 1070},
    {"user_id": BOB, "problem": "balance_chain_broken", "expected": 20, "actual": None},
]


def ledger(accounts: int, problems: list[dict] | None = None):
    """A fake ``billing.verify_ledger`` over ``accounts`` accounts, paged like
    the service: ``problems`` are found on the first page; the cursor is the
    number of accounts done."""

    def verify_ledger(user_id, limit=None, cursor=None):
        if user_id is not None:
            return {"accounts_checked": 1, "problems": []}
        if limit is None:
            return {"accounts_checked": accounts, "problems": list(problems or [])}
        start = int(cursor) if cursor else 0
        end = min(start + limit, accounts)
        return {"accounts_checked": end - start,
                "problems": list(problems or []) if start == 0 else [],
                "accounts_total": None if cursor else accounts,
                "next_cursor": str(end) if end < accounts else None}

    return verify_ledger


@pytest.fixture
def calls(monkeypatch) -> Calls:
    made = Calls()
    answers = {
        "verify_ledger": ledger(12),
        "adjust": lambda user_id, amount, reason, key: {
            "id": "0190a0a0-0000-7000-8000-00000000e001", "kind": "adjustment", "amount": amount,
            "held_change": 0, "balance_after": 70 + amount, "job_id": None, "order_id": None,
            "created_at": "2026-01-02T03:04:05Z", "expires_at": None},
        "refund_order": lambda order_id, amount: {
            "id": order_id, "status": "partially_refunded" if amount else "refunded",
            "amount": 500, "amount_refunded": amount or 500, "currency": "usd"},
    }

    def fake_call(config, method, *args, timeout=None, **kwargs):
        made.append((method, args, timeout))
        return answers[method](*args, **kwargs)

    monkeypatch.setattr(billing_ops, "_call", fake_call)
    made.answers = answers
    return made


# ------------------------------------------------------------ verify


def test_verify_a_consistent_ledger(run, calls):
    result = run("billing", "verify")
    assert result.exit_code == 0, result.output
    assert result.stdout == "checked 12 accounts: the ledger is consistent\n"
    [(method, args, timeout)] = calls
    assert (method, args) == ("verify_ledger", (None, billing_ops.VERIFY_PAGE_ACCOUNTS, None))
    assert timeout >= billing_ops.VERIFY_TIMEOUT_SECONDS


def test_verify_goes_through_the_ledger_page_by_page(run, calls, monkeypatch):
    monkeypatch.setattr(billing_ops, "VERIFY_PAGE_ACCOUNTS", 5)
    calls.answers["verify_ledger"] = ledger(12, PROBLEMS)
    result = run("billing", "verify", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"accounts_checked": 12, "problems": PROBLEMS}
    assert [args for _, args, _ in calls] == [(None, 5, None), (None, 5, "5"), (None, 5, "10")]


class Bar:
    """What ``progress(total)`` makes: records its total and every update."""

    def __init__(self, total):
        self.total, self.updates, self.closed = total, [], False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True

    def update(self, n):
        self.updates.append(n)


def test_verify_moves_the_bar_by_the_accounts_of_each_page(calls):
    calls.answers["verify_ledger"] = ledger(12)
    bars = []
    result = billing_ops.verify({}, progress=lambda total: bars.append(Bar(total)) or bars[-1],
                                page_size=5)
    assert result == {"accounts_checked": 12, "problems": []}
    [bar] = bars
    assert (bar.total, bar.updates, bar.closed) == (12, [5, 5, 2], True)


def test_verify_draws_its_bar_on_stderr_and_not_with_json(run, calls, monkeypatch):
    monkeypatch.setattr(billing_ops, "VERIFY_PAGE_ACCOUNTS", 5)
    monkeypatch.setattr("click._termui_impl.isatty", lambda f: True)
    result = run("billing", "verify")
    assert result.exit_code == 0
    assert "verifying the ledger" in result.stderr and "12/12" in result.stderr
    assert result.stdout == "checked 12 accounts: the ledger is consistent\n"
    result = run("billing", "verify", "--json")
    assert "verifying the ledger" not in result.stderr
    assert json.loads(result.stdout) == {"accounts_checked": 12, "problems": []}


def test_verify_one_user(run, calls):
    result = run("billing", "verify", "--user", ADA.upper())
    assert result.exit_code == 0
    assert result.stdout == "checked 1 account: the ledger is consistent\n"
    assert calls[0][1] == (ADA,)  # one account: one call, no pages


def test_verify_problems_are_listed_and_exit_1(run, calls):
    calls.answers["verify_ledger"] = ledger(12, PROBLEMS)
    result = run("billing", "verify")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "checked 12 accounts: 2 problems found",
        "USER                                  PROBLEM               EXPECTED  ACTUAL",
        f"{ADA}  available_mismatch    70        1070",
        f"{BOB}  balance_chain_broken  20        -",
    ]


def test_verify_json_keeps_the_exit_code(run, calls):
    answer = {"accounts_checked": 12, "problems": PROBLEMS}
    calls.answers["verify_ledger"] = ledger(12, PROBLEMS)
    result = run("billing", "verify", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == answer
    calls.answers["verify_ledger"] = ledger(3)
    result = run("billing", "verify", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"accounts_checked": 3, "problems": []}


def test_verify_a_malformed_user_id_is_bad_usage(run, calls):
    result = run("billing", "verify", "--user", "ada@example.com")
    assert result.exit_code == 2
    assert "not a user id" in result.stderr
    assert calls == []


# ------------------------------------------------------------ adjust


def test_adjust_with_a_key(run, calls):
    result = run("billing", "adjust", "--user", ADA, "--credits", "25", "--reason",
                 " goodwill: failed render ", "--idempotency-key", "TICKET-7")
    assert result.exit_code == 0, result.stderr
    assert calls == [("adjust", (ADA, 25, "goodwill: failed render", "TICKET-7"), None)]
    assert result.stdout == (f"credited 25 credits to user {ADA}: available now 95 "
                             "(entry 0190a0a0-0000-7000-8000-00000000e001, "
                             "idempotency key TICKET-7)\n")


def test_adjust_without_a_key_makes_one_and_prints_it(run, calls):
    result = run("billing", "adjust", "--user", ADA, "--credits", "-30", "--reason", "chargeback")
    assert result.exit_code == 0, result.stderr
    key = calls[0][1][3]
    assert key.startswith("ops-adjust-")
    assert result.stdout.startswith(f"debited 30 credits from user {ADA}: available now 40")
    assert f"idempotency key {key})" in result.stdout
    run("billing", "adjust", "--user", ADA, "--credits", "-30", "--reason", "chargeback")
    assert calls[1][1][3] != key  # a new command, a new key


@pytest.mark.parametrize("args", [
    ["--credits", "5", "--reason", "x"],  # no user
    ["--user", ADA, "--reason", "x"],  # no credits
    ["--user", ADA, "--credits", "5"],  # no reason
    ["--user", ADA, "--credits", "five", "--reason", "x"],
    ["--user", ADA, "--credits", "0", "--reason", "x"],
    ["--user", ADA, "--credits", "5", "--reason", "   "],
    ["--user", "not-a-uuid", "--credits", "5", "--reason", "x"],
    ["--user", ADA, "--credits", "5", "--reason", "x", "--idempotency-key", " "],
])
def test_adjust_bad_usage_is_exit_2_and_no_rpc(run, calls, args):
    result = run("billing", "adjust", *args)
    assert result.exit_code == 2, result.stdout
    assert calls == []


def test_a_refusal_of_billing_is_its_message_and_exit_1(run, calls):
    def refuse(user_id, amount, reason, key):
        raise DomainError("insufficient_credits", "the account has 70 credits available", 402)

    calls.answers["adjust"] = refuse
    result = run("billing", "adjust", "--user", ADA, "--credits", "-500", "--reason", "x")
    assert result.exit_code == 1
    assert "error: the account has 70 credits available (insufficient_credits)" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_billing_service_is_a_clear_error(run, calls):
    def away(user_id, limit=None, cursor=None):
        raise OpsError("no billing service is running on amqp://guest:***@127.0.0.1:5672/x")

    calls.answers["verify_ledger"] = away
    result = run("billing", "verify")
    assert result.exit_code == 1
    assert "error: no billing service is running" in result.stderr


def test_the_rpc_goes_to_billing_with_the_configured_timeout(cluster):
    class Billing:
        @staticmethod
        def verify_ledger(user_id, limit=None, cursor=None):
            return {"accounts_checked": 0, "problems": [], "user_id": user_id, "limit": limit}

        @staticmethod
        def adjust(user_id, amount, reason, key):
            return {"user_id": user_id, "amount": amount, "reason": reason, "key": key}

    seen = cluster(billing=Billing())
    config = {"AMQP_URI": "amqp://x", "RPC_TIMEOUT_SECONDS": 7}
    assert billing_ops.adjust(config, ADA, 3, "why", "k") == \
        {"user_id": ADA, "amount": 3, "reason": "why", "key": "k"}
    assert seen["timeout"] == 7 and seen["correlation_id"].startswith("ops-")
    assert billing_ops.verify(config, ADA) == \
        {"accounts_checked": 0, "problems": [], "user_id": ADA, "limit": None}
    assert seen["timeout"] == billing_ops.VERIFY_TIMEOUT_SECONDS


# ------------------------------------------------------------ refund


ORDER = "0190a0a0-0000-7000-8000-0000000000a1"


def test_refund_part_of_an_order(run, calls):
    result = run("billing", "refund", ORDER, "--amount", "200")
    assert result.exit_code == 0, result.stderr
    assert calls == [("refund_order", (ORDER, 200), None)]
    assert result.stdout == f"order {ORDER}: partially_refunded, 200 of 500 USD refunded\n"
    assert run("billing", "refund", ORDER).exit_code == 0
    assert calls[1][1] == (ORDER, None)


@pytest.mark.parametrize("args", [[], ["not-an-order"], [ORDER, "--amount", "0"],
                                  [ORDER, "--amount", "lots"]])
def test_refund_bad_usage_is_exit_2_and_no_rpc(run, calls, args):
    assert run("billing", "refund", *args).exit_code == 2
    assert calls == []


def test_a_refused_refund_is_reported(run, calls):
    def refuse(order_id, amount):
        raise DomainError("not_refundable", "refund this order in its provider's dashboard", 409)

    calls.answers["refund_order"] = refuse
    result = run("billing", "refund", ORDER)
    assert result.exit_code == 1
    assert "error: refund this order in its provider's dashboard (not_refundable)" in result.stderr
