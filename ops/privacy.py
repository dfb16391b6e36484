"""Privacy requests for operators: ``privacy.report``, ``privacy.retry_request``
and ``privacy.publish_policy`` over nameko RPC, and how the CLI prints them.

The report lists open requests by due date with the overdue ones first, and
every service's part that failed (asked the bounded number of times without
an answer), and the breach incidents still open 48 hours after detection.
Request and incident ids only: the report names no user.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ops import rpc
from ops.errors import id_argument


def _call(config: dict, method: str, *args: Any) -> Any:
    """``privacy.<method>(*args)``; a DomainError propagates for the CLI to print."""
    return rpc.call(config, "privacy", method, *args)


def report(config: dict) -> dict:
    return _call(config, "report")


def retry(config: dict, request_id: str) -> dict:
    return _call(config, "retry_request", id_argument(request_id, "request id"))


def publish_policy(config: dict, version: str, material: bool, summary: str) -> dict:
    return _call(config, "publish_policy",
                 {"version": version, "material": material, "summary": summary})


# ------------------------------------------------------------ printing


def _day(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M")


def report_lines(result: dict) -> list[str]:
    open_requests = result.get("open") or []
    lines = []
    if not open_requests:
        lines.append("no open privacy requests")
    else:
        header = ("REQUEST", "TYPE", "STATUS", "DUE (UTC)", "WAITING FOR")
        rows = []
        for item in open_requests:
            waiting = ", ".join(
                f"{p['service']} ({p['status']}, asked {p['attempts']}x"
                + (", overdue" if p.get("overdue") else "") + ")"
                for p in item.get("parts") or [] if p["status"] != "waiting"
            ) or ("the archive" if item["type"] == "export" and item["status"] != "pending"
                  else "its start" if item["status"] == "pending" else "-")
            due = _day(item.get("due_at")) + (" OVERDUE" if item.get("overdue") else "")
            rows.append((item["id"], item["type"], item["status"], due, waiting))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        for row in [header, *rows]:
            lines.append("  ".join(row[i].ljust(widths[i]) for i in range(4)) + "  " + row[4])
        errors = [i for i in open_requests if i.get("last_error")]
        for item in errors:
            lines.append(f"{item['id']}: last error: {item['last_error']}")
    failed = result.get("failed_parts") or []
    lines.append("")
    if failed:
        lines.append(f"failed parts ({len(failed)}): retry with `darkroom-ops privacy retry ID` "
                     "once the service is back")
        for part in failed:
            lines.append(f"  {part['request_id']}  {part['service']}  asked {part['attempts']}x, "
                         f"last {_day(part.get('asked_at'))}")
    else:
        lines.append("no failed parts")
    breaches = result.get("breaches_overdue") or []
    if breaches:
        lines.append("")
        lines.append(f"breach incidents open 48 hours after detection ({len(breaches)}): report "
                     "them (`darkroom-ops breach report`; docs/runbooks/breach.md)")
        for item in breaches:
            lines.append(f"  {item['id']}  detected {_day(item['detected_at'])}, regulator "
                         f"deadline {_day(item['deadline_at'])}")
    return lines
