"""``darkroom-ops breach``: personal-data breaches, through the privacy
service's RPCs (the rules are services/privacy/breaches.py; the runbook is
docs/runbooks/breach.md).

    darkroom-ops breach open --summary TEXT --detected-at TIME --categories a,b
    darkroom-ops breach affected INCIDENT --from TIME --to TIME [--category C ...]
    darkroom-ops breach notify INCIDENT [--batch-size N]
    darkroom-ops breach report INCIDENT --contact TEXT --measure TEXT ... [--out DIR]
    darkroom-ops breach list [--json]

``open`` starts the 72-hour regulator clock (from the detection time).
``notify`` hands the notices over in batches with a progress bar; it is
idempotent (a notice is sent once) and resumable (run it again after an
interruption). ``report`` writes ``breach-<id>.json`` and ``breach-<id>.md``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from ops import rpc
from ops.errors import OpsError, id_argument
from ops.jobs import parse_since, table
from ops.output import output, progress
from services.common.contracts.privacy import BREACH_CATEGORIES

pass_config = click.make_pass_decorator(dict)


def _call(config: dict, method: str, *args):
    return rpc.call(config, "privacy", method, *args)


def _time(value: str, option: str) -> str:
    """An ISO-8601 time (UTC when it has no offset) or an age (``2h``), as ISO."""
    if value.strip().lower() == "now":
        return datetime.now(UTC).isoformat()
    try:
        return parse_since(value).isoformat()
    except OpsError:
        raise OpsError(f"{option} takes an ISO time (2026-12-01T08:00Z) or an age (2h, 3d), "
                       f"not {value!r}", exit_code=2) from None


def _categories(values: tuple[str, ...]) -> list[str]:
    chosen = [c.strip() for value in values for c in value.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in BREACH_CATEGORIES]
    if unknown:
        raise OpsError(f"unknown categories {', '.join(unknown)}; use "
                       f"{', '.join(BREACH_CATEGORIES)}", exit_code=2)
    return chosen


def incident_id(value: str) -> str:
    return id_argument(value, "incident id")


# ------------------------------------------------------------ printing


def _when(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M")


def list_lines(items: list[dict]) -> list[str]:
    if not items:
        return ["no breach incidents"]
    rows = []
    for i in items:
        if i["state"] == "open":
            left = f"{i['hours_left']:g} h left" + (" OVERDUE (48 h)" if i["overdue"] else "")
        else:
            left = f"reported {_when(i['reported_at'])}"
        notices = i["notices"]
        rows.append((i["id"], i["state"], _when(i["detected_at"]), _when(i["deadline_at"]), left,
                     str(i["affected"]),
                     f"{notices['sent']} sent, {notices['pending']} pending, "
                     f"{notices['skipped_erased']} erased"))
    return table(("INCIDENT", "STATE", "DETECTED (UTC)", "DEADLINE (UTC)", "CLOCK", "AFFECTED",
                   "NOTICES"), rows)


def report_markdown(report: dict) -> str:
    def bullets(items):
        return "\n".join(f"- {item}" for item in items) or "- none"

    window = report.get("window") or {}
    by_source = ", ".join(f"{k}: {v}" for k, v in (report.get("people_by_source") or {}).items())
    return f"""# Personal data breach report — incident {report['incident_id']}

Generated {report['generated_at']}. Detected {report['detected_at']}; the regulator deadline
is {report['deadline_at']} (72 hours){"" if report['reported_within_deadline']
                                        else " — THIS REPORT IS LATE: give the reasons for the delay"}.

## Nature of the breach

{report['nature']}

Window examined: {window.get('from') or '-'} to {window.get('to') or '-'}.

## Categories of personal data

{bullets(report['categories'])}

## Approximate numbers

- people concerned: {report['approximate_people']}{f" ({by_source})" if by_source else ""}
- personal data records concerned: {report['approximate_records']}
- people notified: {report['users_notified']}; not notified because their account was erased
  since: {report['users_not_notified_erased']}; notices still pending: {report['users_pending_notice']}

## Likely consequences

{bullets(report['likely_consequences'])}

## Measures taken or proposed

{bullets(report['measures_taken'])}

## Contact point

{report['contact_point']}
"""


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"breach-{report['incident_id']}"
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(report_markdown(report))
    return json_path, md_path


# ------------------------------------------------------------ commands


@click.group()
def breach():
    """Personal-data breaches: the 72-hour clock, affected users, notices, the regulator report."""


@breach.command("open")
@click.option("--summary", required=True, help="What happened, as the regulator will read it.")
@click.option("--detected-at", "detected_at", required=True, metavar="TIME",
              help="When the breach was detected (ISO time, UTC without an offset; 'now').")
@click.option("--categories", "categories", required=True, multiple=True, metavar="C[,C]",
              help=f"Data concerned: {', '.join(BREACH_CATEGORIES)}.")
@output(lambda incident: [
    f"incident {incident['id']} opened; report to the regulator by "
    f"{_when(incident['deadline_at'])} UTC ({incident['hours_left']:g} h left)"])
@pass_config
def open_(config, summary, detected_at, categories):
    """Record an incident; its regulator clock (72 h) runs from the detection."""
    return _call(config, "breach_open", {
        "summary": summary, "detected_at": _time(detected_at, "--detected-at"),
        "categories": _categories(categories)})


def _affected_lines(result: dict) -> list[str]:
    by_source = ", ".join(f"{k} {v}" for k, v in sorted(result["by_source"].items()))
    return [f"found {result['found']} users ({by_source}); {result['added']} new",
            f"incident {result['incident']['id']}: {result['affected']} affected users, "
            f"{result['records']} records"]


@breach.command("affected")
@click.argument("incident")
@click.option("--from", "window_from", required=True, metavar="TIME", help="Start of the window.")
@click.option("--to", "window_to", required=True, metavar="TIME", help="End of the window.")
@click.option("--category", "categories", multiple=True,
              help="Only these of the incident's categories (default: all of them).")
@output(_affected_lines)
@pass_config
def affected(config, incident, window_from, window_to, categories):
    """Compute and store the users the breach may have touched."""
    return _call(config, "breach_affected", incident_id(incident), {
        "from": _time(window_from, "--from"), "to": _time(window_to, "--to"),
        "categories": _categories(categories)})


@breach.command("notify")
@click.argument("incident")
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(1, 500))
@output(lambda result: [f"{result['sent_now']} notices sent now, {result['skipped_now']} "
                        f"skipped (account erased); {result['sent']} sent in all"])
@pass_config
def notify(config, incident, batch_size):
    """Mail every affected user the breach notice, once (safe to run again)."""
    ident = incident_id(incident)
    first = _call(config, "breach_notify", ident, batch_size)
    sent, skipped = first["sent_now"], first["skipped_now"]
    total = sent + skipped + first["pending"]
    with progress(label="notifying", length=total) as bar:
        bar.update(sent + skipped)
        result = first
        while result["pending"]:
            result = _call(config, "breach_notify", ident, batch_size)
            done = result["sent_now"] + result["skipped_now"]
            if not done:
                raise OpsError("notices still pending but none handed over; "
                               "is another `breach notify` running?")
            sent, skipped = sent + result["sent_now"], skipped + result["skipped_now"]
            bar.update(done)
    return {"incident_id": ident, "sent_now": sent, "skipped_now": skipped,
            "sent": result["notices"]["sent"]}


@breach.command("report")
@click.argument("incident")
@click.option("--contact", required=True, help="The contact point (the DPO's name and address).")
@click.option("--measure", "measures", multiple=True, required=True,
              help="A measure taken or proposed (repeat).")
@click.option("--consequence", "consequences", multiple=True,
              help="A likely consequence (repeat; default: from the categories).")
@click.option("--out", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Directory to write breach-<id>.json and .md into.")
@output(lambda result: [f"wrote {path}" for path in result["files"]])
@pass_config
def report(config, incident, contact, measures, consequences, out):
    """Write the regulator report (JSON and Markdown); marks the incident reported."""
    result = _call(config, "breach_report", incident_id(incident), {
        "contact": contact, "measures": list(measures), "consequences": list(consequences)})
    return {"files": [str(path) for path in write_report(result, Path(out))]}


@breach.command("list")
@output(list_lines)
@pass_config
def list_(config):
    """Each incident's state and regulator deadline, open ones first."""
    return _call(config, "breach_list")["items"]
