"""`darkroom-ops breach ...`: arguments, RPC payloads, the resumable notify
loop, the report files (the RPC replaced by a fake;
tests/integration/test_privacy_breach.py runs them against the real services)."""

from __future__ import annotations

import json
import uuid

import pytest

from ops import breach as breach_ops
from tests.unit.ops.conftest import Calls

INCIDENT = str(uuid.uuid4())
REPORT = {
    "incident_id": INCIDENT, "generated_at": "2026-12-02T10:00:00Z", "nature": "bucket public",
    "detected_at": "2026-12-01T08:00:00Z", "deadline_at": "2026-12-04T08:00:00Z",
    "reported_within_deadline": False, "window": {"from": None, "to": None},
    "categories": ["images"], "approximate_people": 12, "approximate_records": 40,
    "people_by_source": {"storage": 12}, "likely_consequences": ["disclosure"],
    "measures_taken": ["bucket closed"], "users_notified": 11, "users_not_notified_erased": 1,
    "users_pending_notice": 0, "contact_point": "dpo@example.com",
}


@pytest.fixture
def calls(monkeypatch) -> Calls:
    made = Calls()
    pending = [5]

    def notify(incident_id, limit):
        done = min(limit, pending[0])
        pending[0] -= done
        return {"sent_now": done, "skipped_now": 0, "pending": pending[0],
                "notices": {"sent": 5 - pending[0], "pending": pending[0], "skipped_erased": 0}}

    answers = {
        "breach_open": lambda payload: {"id": INCIDENT, "deadline_at": "2026-12-04T08:00:00Z",
                                        "hours_left": 70.0},
        "breach_notify": notify,
        "breach_report": lambda incident_id, payload: REPORT,
    }

    def fake_call(config, method, *args):
        made.append((method, args))
        return answers[method](*args)

    monkeypatch.setattr(breach_ops, "_call", fake_call)
    return made


def test_open_sends_the_time_in_utc_and_the_categories(run, calls):
    result = run("breach", "open", "--summary", "leak", "--detected-at", "2026-12-01T08:00",
                 "--categories", "images,account", "--categories", "access_logs")
    assert result.exit_code == 0, result.output
    (method, (payload,)), = calls
    assert payload == {"summary": "leak", "detected_at": "2026-12-01T08:00:00+00:00",
                       "categories": ["images", "account", "access_logs"]}
    assert f"incident {INCIDENT} opened" in result.output and "70 h left" in result.output


@pytest.mark.parametrize("args, message", [
    (("--detected-at", "last tuesday", "--categories", "images"), "--detected-at takes"),
    (("--detected-at", "now", "--categories", "dna"), "unknown categories dna"),
])
def test_bad_usage_exits_2_without_calling(run, calls, args, message):
    result = run("breach", "open", "--summary", "leak", *args)
    assert result.exit_code == 2 and message in result.output
    assert calls == []


def test_notify_loops_in_batches_until_nothing_is_pending(run, calls):
    result = run("breach", "notify", INCIDENT, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert [c[1] for c in calls] == [(INCIDENT, 2)] * 3
    assert "5 notices sent now, 0 skipped (account erased); 5 sent in all" in result.output


def test_report_writes_json_and_markdown(run, calls, tmp_path):
    result = run("breach", "report", INCIDENT, "--contact", "dpo@example.com",
                 "--measure", "bucket closed", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert calls[0][1][1] == {"contact": "dpo@example.com", "measures": ["bucket closed"],
                              "consequences": []}
    assert json.loads((tmp_path / f"breach-{INCIDENT}.json").read_text()) == REPORT
    markdown = (tmp_path / f"breach-{INCIDENT}.md").read_text()
    assert "THIS REPORT IS LATE" in markdown and "people concerned: 12 (storage: 12)" in markdown


def test_list_lines_show_the_clock():
    items = [{"id": INCIDENT, "state": "open", "detected_at": "2026-12-01T08:00:00Z",
              "deadline_at": "2026-12-04T08:00:00Z", "hours_left": 20.5, "overdue": True,
              "reported_at": None, "affected": 3,
              "notices": {"sent": 1, "pending": 2, "skipped_erased": 0}}]
    (header, row) = breach_ops.list_lines(items)
    assert header.startswith("INCIDENT") and "20.5 h left OVERDUE (48 h)" in row
    assert breach_ops.list_lines([]) == ["no breach incidents"]
