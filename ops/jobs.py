"""Generation jobs for operators: ``generation.find_jobs`` and
``generation.replay_job`` over nameko RPC, and how the CLI prints them.

A replay is a new attempt of the same failed job: billing holds its price
again on the attempt's own ledger keys and releases or captures that hold
like any other, so a job that failed, was replayed and then succeeded is
charged once. The service refuses (409 ``not_replayable``) a job that has
not failed, or whose prompt was redacted when it ended.

Many jobs are replayed through one RPC connection, one call each: a refusal
or a timeout is recorded and the next job tried, so one bad job never hides
the rest of the outcome.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ops import rpc
from ops.errors import OpsError, id_argument
from services.common import ids


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``3d`` (s, m, h, d, w) before ``now``, or an ISO-8601
    time (UTC when it has no offset); OpsError (exit 2) for anything else."""
    try:
        return ids.parse_since(value, now)
    except (ValueError, OverflowError):
        raise OpsError(f"--since takes an age (30m, 2h, 3d) or an ISO time, not {value!r}",
                       exit_code=2) from None


def job_id(value: str) -> str:
    """A job id in canonical form; OpsError (exit 2) when it is not a UUID."""
    return id_argument(value, "job id")


def generation(config: dict):
    """The generation service's RPC proxy (a context manager), with the broker
    checked first and a missing service or a timeout turned into an OpsError."""
    return rpc.service(config, "generation")


def find(config: dict, status: str | None = None, since: datetime | None = None,
         reason: str | None = None, limit: int = 100) -> list[dict]:
    """Jobs by status, last change and error code, oldest change first
    (``OpsJobView``: the job with its ``user_id``)."""
    query: dict[str, Any] = {"limit": limit}
    if status:
        query["status"] = status
    if since is not None:
        query["since"] = since.isoformat()
    if reason:
        query["reason"] = reason
    with generation(config) as service:
        return list(service.find_jobs(query)["items"])


@dataclass
class Outcome:
    job_id: str
    done: bool  # replayed, or cancelled
    code: str | None = None  # why not
    message: str | None = None
    attempt: int | None = None  # the new attempt's number


def replay(config: dict, job_ids: Iterable[str]) -> list[Outcome]:
    """Replay each job (``job_ids`` may be a progress bar wrapping the ids)."""
    return _each(config, job_ids, "replay_job", "the replay")


def _each(config: dict, job_ids: Iterable[str], method: str, what: str) -> list[Outcome]:
    """``generation.<method>(job_id)`` for each job, one outcome each."""
    with generation(config) as service:
        return [Outcome(jid, answer is not None, code, message,
                        attempt=answer.get("attempt") if answer else None)
                for jid, answer, code, message in rpc.each(
                    getattr(service, method), job_ids,
                    f"no answer in time; {what} may still happen")]


def cancel(config: dict, job_ids: Iterable[str]) -> list[Outcome]:
    """Cancel each job that has not started, through the generation service's
    cancel rule (billing releases its hold); a refusal (409
    ``not_cancellable``, 404) or a timeout is recorded and the next one tried."""
    return _each(config, job_ids, "cancel_job_as_operator", "the cancel")


# ------------------------------------------------------------ printing


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()

    return [line(header), *(line(row) for row in rows)]


def list_lines(jobs: list[dict], limit: int | None = None) -> list[str]:
    """One aligned row per job, then a count (and a word when the limit cut it)."""
    if not jobs:
        return ["no jobs match"]
    rows = [(str(j.get("id")), str(j.get("status")), str(j.get("attempt")),
             str((j.get("error") or {}).get("code") or "-"), str(j.get("type")),
             str(j.get("provider") or "-"), str(j.get("user_id")),
             str(j.get("finished_at") or j.get("created_at") or "-")) for j in jobs]
    lines = table(("JOB", "STATUS", "ATTEMPT", "REASON", "TYPE", "PROVIDER", "USER",
                    "FINISHED"), rows)
    lines.append(plural(len(jobs), "job"))
    if limit is not None and len(jobs) >= limit:
        lines[-1] += " (the limit: more may match; raise --limit)"
    return lines


def summary_lines(outcomes: list[Outcome], verb: str = "replayed") -> list[str]:
    """``replayed N of M jobs``, then one row per refused job with its reason."""
    refused = [o for o in outcomes if not o.done]
    done = len(outcomes) - len(refused)
    head = f"{verb} {done} of {plural(len(outcomes), 'job')}"
    if not refused:
        return [head]
    rows = [(o.job_id, o.code or "-", o.message or "") for o in refused]
    return [f"{head}; {len(refused)} could not be {verb}:",
            *("  " + line for line in table(("JOB", "REASON", "MESSAGE"), rows))]
