"""`darkroom-ops webhooks list|redeliver`: arguments, RPC calls, output and
exit codes, with the generation service replaced by a fake behind ops.rpc."""

from __future__ import annotations

import json

import pytest

from services.common.errors import DomainError

JOB = "0190b0b0-0000-7000-8000-000000000001"
ADA = "0190a0a0-0000-7000-8000-000000000001"
FAILED, PENDING = ("0190c0c0-0000-7000-8000-00000000000" + n for n in "12")


def delivery(delivery_id: str, status: str, **extra) -> dict:
    return {"id": delivery_id, "job_id": JOB, "user_id": ADA, "job_attempt": 1,
            "event": "completed", "url": "https://hooks.example.com/d", "status": status,
            "attempts": 8, "response_status": 503, "last_error": "receiver_error",
            "created_at": "2026-03-01T10:00:00+00:00",
            "last_attempt_at": "2026-03-01T18:00:00+00:00", "next_attempt_at": None,
            "delivered_at": None, **extra}


class FakeGeneration:
    def __init__(self):
        self.items = {FAILED: delivery(FAILED, "failed"),
                      PENDING: delivery(PENDING, "pending", attempts=0, response_status=None,
                                        last_error=None, last_attempt_at=None)}
        self.queries: list[dict] = []
        self.redelivered: list[str] = []

    def find_webhook_deliveries(self, query=None):
        self.queries.append(query)
        return {"items": [d for d in self.items.values()
                          if (query or {}).get("status") in (None, d["status"])]}

    def redeliver_webhook(self, delivery_id):
        found = self.items.get(delivery_id)
        if found is None:
            raise DomainError("not_found", "webhook delivery not found", 404)
        if found["status"] == "pending":
            raise DomainError("delivery_pending", "the delivery is still pending", 409)
        self.redelivered.append(delivery_id)
        found["status"] = "pending"
        return found


@pytest.fixture
def service(cluster) -> FakeGeneration:
    fake = FakeGeneration()
    cluster(generation=fake)
    return fake


def test_list_prints_a_table_and_passes_the_filters(run, service):
    result = run("webhooks", "list", "--job", JOB.upper(), "--user", ADA, "--status", "failed",
                 "--limit", "5")
    assert result.exit_code == 0, result.stderr
    assert service.queries == [{"job_id": JOB, "user_id": ADA, "status": "failed", "limit": 5}]
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["DELIVERY", "EVENT", "STATUS", "ATTEMPTS", "ANSWER", "ERROR",
                                "JOB", "LAST", "ATTEMPT"]
    assert lines[1].split()[:6] == [FAILED, "completed", "failed", "8", "503", "receiver_error"]
    assert lines[-1] == "1 delivery"


def test_list_as_json_and_when_nothing_matches(run, service):
    result = run("webhooks", "list", "--json")
    assert [d["id"] for d in json.loads(result.stdout)] == [FAILED, PENDING]
    service.items.clear()
    assert run("webhooks", "list").stdout.strip() == "no webhook deliveries match"


@pytest.mark.parametrize("args", [("list", "--job", "nope"), ("list", "--user", "x"),
                                  ("redeliver", "not-a-uuid"), ("redeliver",),
                                  ("list", "--status", "lost")])
def test_bad_arguments_are_usage_errors_without_a_call(run, service, args):
    result = run("webhooks", *args)
    assert result.exit_code == 2
    assert service.queries == [] and service.redelivered == []


def test_redeliver_queues_ended_ones_and_says_which_could_not_be(run, service):
    unknown = "0190c0c0-0000-7000-8000-000000000009"
    result = run("webhooks", "redeliver", FAILED, PENDING, unknown, FAILED)
    assert result.exit_code == 1
    assert service.redelivered == [FAILED]  # named twice, queued once
    lines = result.stdout.splitlines()
    assert lines[0] == "queued 1 of 3 deliveries for redelivery; 2 could not be queued:"
    assert lines[2].split()[:2] == [PENDING, "delivery_pending"]
    assert lines[3].split()[:2] == [unknown, "not_found"]


def test_redeliver_as_json_exits_0_when_all_were_queued(run, service):
    result = run("webhooks", "redeliver", FAILED, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"delivery_id": FAILED, "queued": True, "code": None, "message": None}]
