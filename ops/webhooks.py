"""Job webhooks for operators: ``generation.find_webhook_deliveries`` and
``generation.redeliver_webhook`` over nameko RPC, and how the CLI prints them.

A redelivery sends the same body with the same ``webhook-id`` at the
generation service's next webhook tick (a receiver that has it already can
tell), signed anew with the account's current secret. Only an ended
delivery (delivered or failed) is sent again: a pending one is on its way
(409 ``delivery_pending``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ops import rpc
from ops.errors import id_argument
from ops.jobs import generation, plural, table


def delivery_id(value: str) -> str:
    """A delivery id in canonical form; OpsError (exit 2) when it is not a UUID."""
    return id_argument(value, "delivery id")


def find(config: dict, job_id: str | None = None, user_id: str | None = None,
         status: str | None = None, limit: int = 100) -> list[dict]:
    """Deliveries by job, user and status, newest first (``OpsWebhookDeliveryView``)."""
    query: dict[str, Any] = {"limit": limit}
    for name, value in (("job_id", job_id), ("user_id", user_id), ("status", status)):
        if value:
            query[name] = value
    with generation(config) as service:
        return list(service.find_webhook_deliveries(query)["items"])


@dataclass
class Outcome:
    delivery_id: str
    queued: bool
    code: str | None = None  # why not
    message: str | None = None


def redeliver(config: dict, delivery_ids: Iterable[str]) -> list[Outcome]:
    """Queue each delivery again (``delivery_ids`` may be a progress bar)."""
    with generation(config) as service:
        return [Outcome(did, answer is not None, code, message)
                for did, answer, code, message in rpc.each(
                    service.redeliver_webhook, delivery_ids,
                    "no answer in time; the redelivery may still happen")]


# ------------------------------------------------------------ printing


def list_lines(items: list[dict], limit: int | None = None) -> list[str]:
    """One aligned row per delivery, then a count."""
    if not items:
        return ["no webhook deliveries match"]
    rows = [(str(d.get("id")), str(d.get("event")), str(d.get("status")),
             str(d.get("attempts")), str(d.get("response_status") or "-"),
             str(d.get("last_error") or "-"), str(d.get("job_id")),
             str(d.get("last_attempt_at") or "-")) for d in items]
    lines = table(("DELIVERY", "EVENT", "STATUS", "ATTEMPTS", "ANSWER", "ERROR", "JOB",
                   "LAST ATTEMPT"), rows)
    lines.append(plural(len(items), "delivery", "deliveries"))
    if limit is not None and len(items) >= limit:
        lines[-1] += " (the limit: more may match; raise --limit)"
    return lines


def summary_lines(outcomes: list[dict]) -> list[str]:
    """``queued N of M deliveries``, then one row per refused one with its reason
    (``outcomes``: the :class:`Outcome` fields, as ``--json`` prints them)."""
    refused = [o for o in outcomes if not o["queued"]]
    head = (f"queued {len(outcomes) - len(refused)} of "
            + plural(len(outcomes), "delivery", "deliveries")
            + " for redelivery")
    if not refused:
        return [head]
    rows = [(o["delivery_id"], o["code"] or "-", o["message"] or "") for o in refused]
    return [f"{head}; {len(refused)} could not be queued:",
            *("  " + line for line in table(("DELIVERY", "REASON", "MESSAGE"), rows))]

