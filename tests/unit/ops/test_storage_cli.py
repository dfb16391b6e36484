"""`darkroom-ops storage purge|report`: arguments, RPC payloads, output, exit
codes (the RPC itself replaced by a fake; tests/integration/test_ops_storage.py
runs them over real RPC)."""

from __future__ import annotations

import json

import pytest

from ops import storage as storage_ops
from ops.errors import OpsError
from services.common.errors import DomainError
from tests.unit.ops.conftest import Calls

REPORT = {
    "by_kind": {"output": {"objects": 3, "bytes": 5 * 1024 ** 3}, "upload": {"objects": 12, "bytes": 3_565_158}},
    "by_age_days": {"30+": {"objects": 1, "bytes": 10}, "0-7": {"objects": 14, "bytes": 2048}},
    "expired_pending": {"objects": 1, "bytes": 10},
    "deleted": {"objects": 7},
}


def draining(objects: list[int], nbytes: int = 0):
    """A storage service with batches of ``objects`` objects due: a dry run
    counts them, each ``max_batches: 1`` call purges the next batch."""
    left = list(objects)

    def purge_expired(payload):
        if payload["dry_run"]:
            return {"dry_run": True, "batches": len(left), "objects": sum(left),
                    "bytes": nbytes * len(left)}
        assert payload["max_batches"] == 1
        if not left:
            return {"dry_run": False, "batches": 0, "objects": 0, "bytes": 0}
        return {"dry_run": False, "batches": 1, "objects": left.pop(0), "bytes": nbytes}

    return purge_expired


@pytest.fixture
def calls(monkeypatch) -> Calls:
    """Every storage RPC the commands make, answered from ``calls.answers``."""
    made = Calls()
    answers = {
        "purge_expired": draining([500, 500, 234], 1_188_386),
        "report": lambda: REPORT,
    }

    def fake_call(config, method, *args, timeout=None):
        made.append((method, args, timeout, config["AMQP_URI"]))
        return answers[method](*args)

    monkeypatch.setattr(storage_ops, "_call", fake_call)
    made.answers = answers
    return made


def test_purge_goes_batch_by_batch_with_a_progress_bar(run, calls):
    result = run("storage", "purge")
    assert result.exit_code == 0, result.output
    assert result.stdout == "purged 1234 objects (3.4 MiB) in 3 batches\n"
    assert "purging" in result.stderr  # the bar: on stderr, stdout stays clean
    # a count first (the bar's length), then one batch per call until one purges nothing
    assert [args for _, args, _, _ in calls] == [
        ({"dry_run": True},), *[({"dry_run": False, "max_batches": 1},)] * 4]
    assert {amqp_uri for *_, amqp_uri in calls} == {"amqp://guest:guest@127.0.0.1:5672/x"}
    assert min(timeout for _, _, timeout, _ in calls) >= 600  # longer than the usual RPC timeout
    assert json.loads(run("storage", "purge", "--json").stdout) == {
        "dry_run": False, "batches": 0, "objects": 0, "bytes": 0}  # nothing left the second time


def test_purge_dry_run_with_a_batch_size(run, calls):
    result = run("storage", "purge", "--dry-run", "--batch-size", "50")
    assert result.exit_code == 0, result.output
    assert result.stdout == ("dry run: 1234 objects (3.4 MiB) past retention would be purged in "
                             "3 batches; nothing was deleted\n")
    assert calls[0][1] == ({"dry_run": True, "batch_size": 50},)


def test_purge_of_nothing(run, calls):
    calls.answers["purge_expired"] = draining([1])
    assert run("storage", "purge").stdout == "purged 1 object (0 B) in 1 batch\n"


@pytest.mark.parametrize("value", ["0", "10001", "-5", "many"])
def test_purge_batch_size_must_be_in_range(run, calls, value):
    result = run("storage", "purge", "--batch-size", value)
    assert result.exit_code == 2
    assert calls == []


def test_report_table(run, calls):
    result = run("storage", "report")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "KIND    OBJECTS    BYTES",
        "upload       12  3.4 MiB",
        "output        3  5.0 GiB",
        "",
        "AGE (DAYS)  OBJECTS    BYTES",
        "0-7              14  2.0 KiB",
        "30+               1     10 B",
        "",
        "expired, awaiting purge: 1 object (10 B)",
        "deleted (rows kept, bytes gone): 7 objects",
    ]
    assert calls == [("report", (), None, "amqp://guest:guest@127.0.0.1:5672/x")]


def test_report_of_an_empty_store(run, calls):
    calls.answers["report"] = lambda: {"by_kind": {}, "by_age_days": {},
                                       "expired_pending": {"objects": 0, "bytes": 0},
                                       "deleted": {"objects": 0}}
    lines = run("storage", "report").output.splitlines()
    assert lines[:2] == ["KIND  OBJECTS  BYTES", "(none)"]
    assert lines[-2:] == ["expired, awaiting purge: 0 objects (0 B)",
                          "deleted (rows kept, bytes gone): 0 objects"]


def test_report_json(run, calls):
    result = run("storage", "report", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output) == REPORT


def test_a_domain_error_is_its_message_and_exit_1(run, calls):
    def refuse(payload):
        raise DomainError("invalid_request", "the request is not valid", 400)

    calls.answers["purge_expired"] = refuse
    result = run("storage", "purge")
    assert result.exit_code == 1
    assert "error: the request is not valid (invalid_request)" in result.output
    assert "Traceback" not in result.output


def test_an_ops_error_is_its_message_and_exit_1(run, calls):
    def away():
        raise OpsError("no storage service is running on amqp://guest:***@127.0.0.1:5672/x")

    calls.answers["report"] = away
    result = run("storage", "report")
    assert result.exit_code == 1
    assert "error: no storage service is running" in result.output


def test_the_rpc_timeout_comes_from_the_config(cluster):
    class Storage:
        @staticmethod
        def report():
            return {"ok": True}

        @staticmethod
        def purge_expired(payload):
            return payload

    seen = cluster(storage=Storage())
    config = {"AMQP_URI": "amqp://x", "RPC_TIMEOUT_SECONDS": 7}
    assert storage_ops.report(config) == {"ok": True}
    assert seen["timeout"] == 7 and seen["correlation_id"].startswith("ops-")
    assert storage_ops.purge(config, True, 9) == {"dry_run": True, "batch_size": 9}
    assert seen["timeout"] == storage_ops.PURGE_TIMEOUT_SECONDS
    assert storage_ops.purge({**config, "RPC_TIMEOUT_SECONDS": 900}) == {"dry_run": False}
    assert seen["timeout"] == 900


@pytest.mark.parametrize("size, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (3 * 1024 ** 2, "3.0 MiB"), (5 * 1024 ** 3 + 1, "5.0 GiB"), (2 * 1024 ** 5, "2048.0 TiB"),
])
def test_human_bytes(size, text):
    assert storage_ops.human_bytes(size) == text
