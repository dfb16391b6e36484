"""`darkroom-ops privacy report|retry|publish-policy`: output, payloads and
exit codes (the RPC replaced by a fake; the e2e test runs them for real)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ops import cli as cli_module
from ops import privacy as privacy_ops
from services.common.errors import DomainError

OVERDUE = "01900000-0000-7000-8000-00000000d001"
FRESH = "01900000-0000-7000-8000-00000000d002"
REPORT = {
    "generated_at": "2026-11-22T12:00:00Z",
    "open": [
        {"id": OVERDUE, "type": "erasure", "status": "failed", "created_at": "2026-10-01T00:00:00Z",
         "due_at": "2026-10-31T00:00:00Z", "overdue": True, "phase": 2, "last_error": None,
         "parts": [{"service": "billing", "status": "failed", "attempts": 5,
                    "asked_at": "2026-10-02T00:00:00Z", "overdue": True},
                   {"service": "storage", "status": "pending", "attempts": 1,
                    "asked_at": "2026-11-22T11:00:00Z", "overdue": False}]},
        {"id": FRESH, "type": "export", "status": "in_progress",
         "created_at": "2026-11-22T11:00:00Z", "due_at": "2026-12-22T11:00:00Z",
         "overdue": False, "phase": 1, "last_error": "upload failed: HTTP 503", "parts": []},
    ],
    "failed_parts": [{"request_id": OVERDUE, "service": "billing", "attempts": 5,
                      "asked_at": "2026-10-02T00:00:00Z"}],
}


class Calls(list):
    answers: dict


@pytest.fixture
def calls(monkeypatch):
    made = Calls()
    answers = {
        "report": lambda: REPORT,
        "retry_request": lambda request_id: {"request_id": request_id, "asked_again": ["billing"]},
        "publish_policy": lambda payload: {**payload, "published_at": "2026-11-22T12:00:00Z"},
    }

    def fake_call(config, method, *args):
        made.append((method, args))
        return answers[method](*args)

    monkeypatch.setattr(privacy_ops, "_call", fake_call)
    made.answers = answers
    return made


def run(*args):
    return CliRunner().invoke(cli_module.cli, ["privacy", *args], catch_exceptions=False)


def test_the_report_lists_overdue_first_and_failed_parts_and_exits_1(calls):
    result = run("report")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["REQUEST", "TYPE", "STATUS", "DUE"]
    assert lines[1].startswith(OVERDUE) and "OVERDUE" in lines[1]
    assert "billing (failed, asked 5x, overdue), storage (pending, asked 1x)" in lines[1]
    assert lines[2].startswith(FRESH) and "the archive" in lines[2]
    assert f"{FRESH}: last error: upload failed: HTTP 503" in result.output
    assert f"  {OVERDUE}  billing  asked 5x, last 2026-10-02 00:00" in result.output


def test_a_clean_report_exits_0(calls):
    calls.answers["report"] = lambda: {"open": [], "failed_parts": []}
    result = run("report")
    assert result.exit_code == 0
    assert result.output.splitlines() == ["no open privacy requests", "", "no failed parts"]
    assert json.loads(run("report", "--json").output) == {"open": [], "failed_parts": []}


def test_a_breach_open_48_hours_is_listed_and_exits_1(calls):
    incident = "01900000-0000-7000-8000-00000000b001"
    calls.answers["report"] = lambda: {"open": [], "failed_parts": [], "breaches_overdue": [
        {"id": incident, "summary": "leak", "detected_at": "2026-11-20T10:00:00Z",
         "deadline_at": "2026-11-23T10:00:00Z"}]}
    result = run("report")
    assert result.exit_code == 1
    assert "breach incidents open 48 hours after detection (1)" in result.output
    assert f"  {incident}  detected 2026-11-20 10:00, regulator deadline 2026-11-23 10:00" \
        in result.output


def test_retry_names_what_was_asked_again(calls):
    result = run("retry", OVERDUE)
    assert result.exit_code == 0 and result.output.strip() == (
        f"request {OVERDUE}: asked again: billing")
    bad = CliRunner().invoke(cli_module.cli, ["privacy", "retry", "not-an-id"])
    assert bad.exit_code == 2 and "not a request id" in bad.output
    assert calls == [("retry_request", (OVERDUE,))]


def test_publish_policy_sends_the_version_and_its_kind(calls):
    result = run("publish-policy", "--version", "2026-12", "--minor", "--summary", "Typos.")
    assert result.exit_code == 0 and "policy 2026-12 published (minor)" in result.output
    assert calls == [("publish_policy", ({"version": "2026-12", "material": False,
                                          "summary": "Typos."},))]
    calls.answers["publish_policy"] = lambda payload: (_ for _ in ()).throw(
        DomainError("policy_version_exists", "policy version 2026-12 was published before", 409))
    refused = CliRunner().invoke(cli_module.cli, ["privacy", "publish-policy", "--version",
                                                  "2026-12", "--material", "--summary", "x"])
    assert refused.exit_code == 1 and "(policy_version_exists)" in refused.output
