"""`darkroom-ops jobs list|replay`: arguments, RPC calls, output, progress,
summary and exit codes, with the generation service replaced by a fake."""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from nameko.exceptions import RpcTimeout, UnknownService

from ops import jobs as jobs_ops
from ops.errors import OpsError
from services.common.errors import DomainError

ADA = "0190a0a0-0000-7000-8000-000000000001"
JOBS = [f"0190b0b0-0000-7000-8000-00000000000{n}" for n in range(1, 6)]
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def failed_job(job_id: str, reason: str = "provider_unavailable", attempt: int = 1) -> dict:
    return {"id": job_id, "user_id": ADA, "type": "text-to-image", "status": "failed",
            "attempt": attempt, "progress": 0.3, "stage": "failed", "queue_position": None,
            "price": 4, "outputs": [], "error": {"code": reason, "message": "all providers down"},
            "provider": None, "created_at": "2026-03-01T10:00:00+00:00",
            "finished_at": "2026-03-01T10:01:00+00:00"}


class FakeGeneration:
    """``find_jobs`` answers ``jobs`` (filtered by status and reason);
    ``replay_job`` replays a failed job once and refuses anything else."""

    def __init__(self):
        self.jobs = {j: failed_job(j) for j in JOBS[:3]}
        self.jobs[JOBS[3]] = {**failed_job(JOBS[3]), "status": "succeeded", "error": None}
        self.queries: list[dict] = []
        self.replayed: list[str] = []
        self.timeout_on: set[str] = set()

    def find_jobs(self, query=None):
        self.queries.append(query)
        query = query or {}
        items = [j for j in self.jobs.values()
                 if query.get("status") in (None, j["status"])
                 and query.get("reason") in (None, (j["error"] or {}).get("code"))]
        return {"items": items[:query.get("limit", 100)]}  # FindJobs' default

    def replay_job(self, job_id):
        if job_id in self.timeout_on:
            raise RpcTimeout()
        job = self.jobs.get(job_id)
        if job is None:
            raise DomainError("not_found", "job not found", 404)
        if job["status"] != "failed":
            raise DomainError("not_replayable",
                              f"only failed jobs can be replayed; this one is {job['status']}",
                              409, {"status": job["status"]})
        self.replayed.append(job_id)
        job.update(status="queued", attempt=job["attempt"] + 1, error=None)
        return job


@pytest.fixture
def service(monkeypatch) -> FakeGeneration:
    fake = FakeGeneration()
    opened = []

    @contextmanager
    def generation(config):
        opened.append(config["AMQP_URI"])
        yield fake

    monkeypatch.setattr(jobs_ops, "generation", generation)
    fake.opened = opened
    return fake


# ------------------------------------------------------------ --since


@pytest.mark.parametrize("value, expected", [
    ("30m", NOW - timedelta(minutes=30)), ("2h", NOW - timedelta(hours=2)),
    ("3d", NOW - timedelta(days=3)), (" 45s ", NOW - timedelta(seconds=45)),
    ("1w", NOW - timedelta(weeks=1)),
    ("2026-02-28T08:00:00+01:00", datetime(2026, 2, 28, 7, 0, tzinfo=UTC)),
    ("2026-02-28T08:00:00Z", datetime(2026, 2, 28, 8, 0, tzinfo=UTC)),
    ("2026-02-28T08:00", datetime(2026, 2, 28, 8, 0, tzinfo=UTC)),  # UTC without an offset
])
def test_since_takes_ages_and_iso_times(value, expected):
    assert jobs_ops.parse_since(value, NOW) == expected


@pytest.mark.parametrize("value", ["2 hours", "h", "-2h", "2y", "yesterday", ""])
def test_since_refuses_anything_else(value):
    with pytest.raises(OpsError) as info:
        jobs_ops.parse_since(value, NOW)
    assert info.value.exit_code == 2


# ------------------------------------------------------------ list


def test_list_prints_a_table_and_passes_the_filters(run, service):
    before = datetime.now(UTC)
    result = run("jobs", "list", "--status", "failed", "--since", "2h", "--reason",
                 "provider_unavailable", "--limit", "50")
    assert result.exit_code == 0, result.stderr
    [query] = service.queries
    assert (query["status"], query["reason"], query["limit"]) == (
        "failed", "provider_unavailable", 50)
    since = datetime.fromisoformat(query["since"])
    assert before - timedelta(hours=2, seconds=5) <= since <= datetime.now(UTC) - timedelta(hours=2)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["JOB", "STATUS", "ATTEMPT", "REASON", "TYPE", "PROVIDER", "USER",
                                "FINISHED"]
    assert [line.split()[0] for line in lines[1:4]] == JOBS[:3]
    assert lines[1].split()[1:4] == ["failed", "1", "provider_unavailable"]
    assert lines[-1] == "3 jobs"


def test_list_without_filters_and_the_limit_note(run, service):
    result = run("jobs", "list", "--limit", "2")
    assert result.exit_code == 0
    assert service.queries == [{"limit": 2}]
    assert result.stdout.splitlines()[-1] == "2 jobs (the limit: more may match; raise --limit)"


def test_list_json(run, service):
    result = run("jobs", "list", "--json", "--status", "succeeded")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [service.jobs[JOBS[3]]]


def test_list_nothing(run, service):
    result = run("jobs", "list", "--reason", "nothing_like_it")
    assert result.exit_code == 0
    assert result.stdout == "no jobs match\n"


@pytest.mark.parametrize("args", [["--status", "done"], ["--since", "soon"],
                                  ["--limit", "0"], ["--limit", "10001"]])
def test_list_bad_usage_is_exit_2_and_no_rpc(run, service, args):
    result = run("jobs", "list", *args)
    assert result.exit_code == 2
    assert service.queries == []


# ------------------------------------------------------------ replay


def test_replay_named_jobs_with_a_summary(run, service):
    result = run("jobs", "replay", JOBS[0], JOBS[1].upper(), "--yes")
    assert result.exit_code == 0, result.stderr
    assert service.replayed == [JOBS[0], JOBS[1]]  # canonical ids
    assert result.stdout == "replayed 2 of 2 jobs\n"
    assert "replaying" in result.stderr  # the progress bar goes to stderr
    assert service.jobs[JOBS[0]]["attempt"] == 2
    assert len(service.opened) == 1  # one connection for the whole run


def test_replay_refusals_are_listed_with_their_reasons_and_exit_1(run, service):
    unknown = "0190b0b0-0000-7000-8000-0000000000ff"
    service.timeout_on.add(JOBS[2])
    result = run("jobs", "replay", JOBS[0], JOBS[3], unknown, JOBS[2], "--yes")
    assert result.exit_code == 1
    assert service.replayed == [JOBS[0]]
    lines = result.stdout.splitlines()
    assert lines[0] == "replayed 1 of 4 jobs; 3 could not be replayed:"
    assert lines[1].split() == ["JOB", "REASON", "MESSAGE"]
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[2:]}
    assert rows == {
        JOBS[3]: ["not_replayable", "only failed jobs can be replayed; this one is succeeded"],
        unknown: ["not_found", "job not found"],
        JOBS[2]: ["timeout", "no answer in time; the replay may still happen"],
    }


def test_replay_by_filter_lists_then_replays_the_failed_jobs(run, service):
    service.jobs[JOBS[1]]["error"]["code"] = "moderation_unavailable"
    result = run("jobs", "replay", "--status", "failed", "--since", "2h", "--reason",
                 "provider_unavailable", "--yes")
    assert result.exit_code == 0, result.stderr
    [query] = service.queries
    assert (query["status"], query["reason"], query["limit"]) == (
        "failed", "provider_unavailable", 1000)
    assert service.replayed == [JOBS[0], JOBS[2]]
    lines = result.stdout.splitlines()
    assert lines[-2] == "2 jobs" and lines[-1] == "replayed 2 of 2 jobs"


def test_replay_by_filter_implies_failed(run, service):
    result = run("jobs", "replay", "--since", "1d", "--yes")
    assert result.exit_code == 0
    assert service.queries[0]["status"] == "failed"
    assert service.replayed == JOBS[:3]


def test_replay_by_filter_with_nothing_to_do(run, service):
    result = run("jobs", "replay", "--since", "2h", "--reason", "nothing_like_it", "--yes")
    assert result.exit_code == 0
    assert result.stdout == "no failed jobs match\n"
    assert service.replayed == []


def test_dry_run_replays_nothing(run, service):
    result = run("jobs", "replay", "--since", "2h", "--dry-run")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == "dry run: would replay 3 jobs"
    result = run("jobs", "replay", JOBS[0], "--dry-run")
    assert result.stdout == f"dry run: would replay 1 job: {JOBS[0]}\n"
    assert service.replayed == []


def test_replay_asks_first_without_yes(run, service):
    result = run("jobs", "replay", JOBS[0], input="n\n")
    assert result.exit_code == 1  # aborted
    assert "Replay 1 job?" in result.stderr
    assert service.replayed == []
    result = run("jobs", "replay", JOBS[0], input="y\n")
    assert result.exit_code == 0
    assert service.replayed == [JOBS[0]]


@pytest.mark.parametrize("args", [
    [],  # neither ids nor a filter
    [JOBS[0], "--since", "2h"],  # both
    ["--reason", "provider_unavailable"],  # a filter without --since
    ["--status", "failed"],
    ["--status", "succeeded", "--since", "2h"],
    ["not-a-uuid"],
    ["--since", "tomorrow"],
])
def test_replay_bad_usage_is_exit_2_and_no_rpc(run, service, args):
    result = run("jobs", "replay", "--yes", *args)
    assert result.exit_code == 2, result.stdout
    assert service.queries == [] and service.replayed == []


def test_no_generation_service_is_a_clear_error(run, monkeypatch):
    @contextmanager
    def away(config):
        raise OpsError("no generation service is running on amqp://guest:***@127.0.0.1:5672/x")
        yield

    monkeypatch.setattr(jobs_ops, "generation", away)
    for args in (["list"], ["replay", JOBS[0], "--yes"]):
        result = run("jobs", *args)
        assert result.exit_code == 1
        assert "error: no generation service is running" in result.stderr
        assert "Traceback" not in result.stderr


# ------------------------------------------------------------ the RPC plumbing


def test_the_rpc_goes_to_generation_with_the_configured_timeout(cluster):
    fake = FakeGeneration()
    seen = cluster(generation=fake)
    config = {"AMQP_URI": "amqp://x", "RPC_TIMEOUT_SECONDS": 7}
    since = datetime(2026, 3, 1, tzinfo=UTC)
    assert [j["id"] for j in jobs_ops.find(config, "failed", since)] == JOBS[:3]
    assert fake.queries == [{"limit": 100, "status": "failed", "since": "2026-03-01T00:00:00+00:00"}]
    assert seen["timeout"] == 7 and seen["correlation_id"].startswith("ops-")
    [outcome] = jobs_ops.replay(config, [JOBS[0]])
    assert (outcome.done, outcome.attempt) == (True, 2)


@pytest.mark.parametrize("error, message", [
    (UnknownService("generation"), "no generation service is running on amqp://x"),
    (RpcTimeout(), "the generation service did not answer within 7 s"),
])
def test_a_missing_or_silent_service_is_an_ops_error(cluster, error, message):
    class Refusing:
        def find_jobs(self, query):
            raise error

    cluster(generation=Refusing())
    with pytest.raises(OpsError) as info:
        jobs_ops.find({"AMQP_URI": "amqp://x", "RPC_TIMEOUT_SECONDS": 7})
    assert info.value.message == message
