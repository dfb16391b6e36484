"""``darkroom-ops``: the operators' command line.

    darkroom-ops --version
    darkroom-ops dlq list
    darkroom-ops dlq show <queue> [--limit N] [--json] [--traceback]
    darkroom-ops dlq replay (<queue> | --all) [--limit N] [--dry-run]
    darkroom-ops dlq purge <queue> --yes
    darkroom-ops dlq restamp (<queue> | --all)
    darkroom-ops queues migrate --to (quorum | classic) [--dry-run]
    darkroom-ops users list [--email TEXT] [--limit N] [--cursor C]
    darkroom-ops users show <user>
    darkroom-ops users disable|enable <user>
    darkroom-ops users delete <user> --reason TEXT --yes
    darkroom-ops users delete-minor <user> --yes
    darkroom-ops users grant-admin <email>
    darkroom-ops users revoke-admin <email>
    darkroom-ops keys revoke (<key id or prefix> | --user <user>)
    darkroom-ops storage purge [--dry-run] [--batch-size N]
    darkroom-ops storage report [--json]
    darkroom-ops storage rekey [--storage-config PATH]
    darkroom-ops fields (status | rekey [--batch-size N]) [--service NAME]...
    darkroom-ops billing verify [--user ID] [--json]
    darkroom-ops billing adjust --user ID --credits N --reason TEXT [--idempotency-key K]
    darkroom-ops billing refund ORDER [--amount N]
    darkroom-ops jobs list [--status S] [--since 2h] [--reason CODE] [--limit N] [--json]
    darkroom-ops jobs replay (JOB_ID... | --status failed --since 2h [--reason CODE])
                             [--dry-run] [--yes]
    darkroom-ops jobs cancel JOB_ID... [--yes]
    darkroom-ops webhooks list [--job ID] [--user ID] [--status S] [--limit N] [--json]
    darkroom-ops webhooks redeliver DELIVERY_ID... [--json]
    darkroom-ops privacy report [--json]
    darkroom-ops privacy retry <request id>
    darkroom-ops privacy publish-policy --version V (--material | --minor) --summary TEXT
    darkroom-ops doctor [--only NAME]

Every command takes --json (ops/output.py): its result as JSON on stdout, an
error as {"error": {...}}; progress bars draw on stderr. A <user> is an id or
an email address. Settings come from deploy/config/ops.yaml (``--config`` for another file) and
the environment (``AMQP_URI``, ``RABBIT_MANAGEMENT_URL``). Exit codes: 0 done,
1 failed (the message says why), 2 bad usage.
"""

from __future__ import annotations

import json
import logging
import warnings

# Operators need not see the libraries' deprecation notices on every command
# (set before nameko and eventlet are imported).
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated")

import click  # noqa: E402

from ops import backup as backup_ops  # noqa: E402
from ops import billing as billing_ops  # noqa: E402
from ops import breach as breach_ops  # noqa: E402
from ops import dlq as dlq_ops  # noqa: E402
from ops import doctor as doctor_ops  # noqa: E402
from ops import fields as field_ops  # noqa: E402
from ops import jobs as jobs_ops  # noqa: E402
from ops import keys as key_ops  # noqa: E402
from ops import privacy as privacy_ops  # noqa: E402
from ops import queues as queue_ops  # noqa: E402
from ops import storage as storage_ops  # noqa: E402
from ops import users as user_ops  # noqa: E402
from ops import webhooks as webhook_ops  # noqa: E402
from ops.config import load_ops_config  # noqa: E402
from ops.errors import OpsError, id_argument  # noqa: E402
from ops.output import bar, error, output, progress  # noqa: E402
from services.common.contracts.generation import (  # noqa: E402
    WEBHOOK_DELIVERY_STATUSES,
    JobState,
)
from services.common.errors import DomainError  # noqa: E402
from services.common.version import darkroom_version  # noqa: E402


class OpsGroup(click.Group):
    """Expected failures become a message and an exit code, never a traceback
    (and, with --json, a JSON error on stdout: ops/output.py)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OpsError as exc:
            error(exc.message, "usage" if exc.exit_code == 2 else "error")
            ctx.exit(exc.exit_code)
        except DomainError as exc:
            error(exc.message, exc.code)
            ctx.exit(1)


pass_config = click.make_pass_decorator(dict)


def plural(n: int, word: str) -> str:
    return f"{n} {word if n == 1 else word + 's'}"


@click.group(cls=OpsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(darkroom_version(), "--version", prog_name="darkroom-ops",
                      message="%(prog)s %(version)s")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              envvar="DARKROOM_OPS_CONFIG", help="Config file (default deploy/config/ops.yaml).")
@click.pass_context
def cli(ctx, config_file):
    """Darkroom operations: dead letters, accounts, keys, stored files, credits,
    jobs, privacy, and a health check of the deployment (doctor)."""
    # doctor reads every config itself: a broken ops.yaml is one of its findings
    ctx.obj = {} if ctx.invoked_subcommand == "doctor" else load_ops_config(config_file)
    ctx.meta["darkroom_ops.config_file"] = config_file


# ------------------------------------------------------------ dlq


@cli.group(cls=OpsGroup)
def dlq():
    """Dead-letter queues (messages event handlers gave up on)."""


def _dlq_list_lines(queues: list[dict]) -> list[str]:
    if not queues:
        return ["no dead-letter queues"]
    width = max(len(q["queue"]) for q in queues)
    return [f"{'QUEUE'.ljust(width)}  MESSAGES",
            *(f"{q['queue'].ljust(width)}  {q['messages']}" for q in queues)]


@dlq.command("list")
@output(_dlq_list_lines)
@pass_config
def dlq_list(config):
    """Every dlq.* queue of the vhost with its message count."""
    return [{"queue": q, "messages": n} for q, n in dlq_ops.list_dlqs(config)]


def _dlq_show_lines(letters: list[dict]) -> list[str]:
    params = click.get_current_context().params
    with_traceback = params["with_traceback"]
    if not letters:
        return [f"{dlq_ops.resolve(params['queue'])} is empty"]
    lines = []
    for number, letter in enumerate(letters, 1):
        body = letter["body"] if isinstance(letter["body"], str) else json.dumps(letter["body"],
                                                                                default=str)
        lines.append(f"#{number} {letter['event'] or '(unknown event)'}")
        for label, key in (("error", "error"), ("attempts", "attempts"), ("replays", "replays"),
                           ("dead-lettered at", "dead_lettered_at"), ("expires at", "expires_at"),
                           ("original queue", "original_queue"),
                           ("correlation id", "correlation_id"),
                           ("content type", "content_type")):
            value = letter[key]
            lines.append(f"  {label + ':':<18}{'-' if value is None else value}")
        lines.append(f"  {'body:':<18}{body}")
        if with_traceback and letter.get("traceback"):
            lines.append("  traceback:")
            lines.append("    " + letter["traceback"].rstrip().replace("\n", "\n    "))
        lines.append("")
    return lines


@dlq.command("show")
@click.argument("queue")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--traceback", "with_traceback", is_flag=True, help="Include the handler's traceback.")
@output(_dlq_show_lines)
@pass_config
def dlq_show(config, queue, limit, with_traceback):
    """Peek at dead letters without consuming them (QUEUE: dlq.<q> or <q>)."""
    letters = [letter.to_dict() for letter in dlq_ops.show(config, queue, limit)]
    if not with_traceback:
        for item in letters:
            item.pop("traceback")
    return letters


def _replay_lines(result: dict) -> list[str]:
    if result["dry_run"]:
        lines = [f"dry run: would replay {plural(result['messages'], 'message')} from "
                 f"{plural(len(result['queues']), 'queue')}; nothing was moved"]
        return lines + [f"  {q['queue']}  {q['messages']}" for q in result["queues"]]
    if result["all"]:
        return [*(f"replayed {plural(q['messages'], 'message')} from {q['queue']}"
                  for q in result["queues"]),
                f"replayed {plural(result['messages'], 'message')} in all"]
    [only] = result["queues"]
    return [f"replayed {plural(only['messages'], 'message')} from {only['queue']}"]


@dlq.command("replay")
@click.argument("queue", required=False)
@click.option("--all", "every", is_flag=True, help="Every non-empty dlq.* queue of the vhost.")
@click.option("--limit", type=click.IntRange(min=1),
              help="At most this many per queue (default: all).")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; move nothing.")
@output(_replay_lines)
@pass_config
def dlq_replay(config, queue, every, limit, dry_run):
    """Send dead letters back to the queue that failed them, and only to it."""
    if bool(queue) == every:
        raise OpsError("name one queue or pass --all", exit_code=2)
    plan = dlq_ops.replay_plan(config, None if every else queue, limit)
    if not dry_run:
        with progress(label="replaying", length=sum(q["messages"] for q in plan)) as bar:
            plan = [{"queue": q["queue"],
                     "messages": dlq_ops.replay(config, q["queue"], limit, bar)} for q in plan]
    return {"dry_run": dry_run, "all": every, "queues": plan,
            "messages": sum(q["messages"] for q in plan)}


@dlq.command("restamp")
@click.argument("queue", required=False)
@click.option("--all", "every", is_flag=True, help="Every dlq.* queue of the vhost.")
@output(lambda moved: [f"restamped {plural(q['messages'], 'message')} in {q['queue']}"
                       for q in moved])
@pass_config
def dlq_restamp(config, queue, every):
    """Requeue dead letters older than the TTL policy so they expire (once, after upgrading)."""
    if bool(queue) == every:
        raise OpsError("name one queue or pass --all", exit_code=2)
    counts = (dlq_ops.list_dlqs(config) if every
              else [(dlq_ops.resolve(queue), dlq_ops.count(config, queue))])
    with progress(label="restamping", length=sum(n for _, n in counts)) as bar:
        return [{"queue": name, "messages": dlq_ops.restamp(config, name, bar)}
                for name, _ in counts]


@dlq.command("purge")
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Really delete the messages.")
@output(lambda r: [f"purged {plural(r['messages'], 'message')} from {r['queue']}"])
@pass_config
def dlq_purge(config, queue, yes):
    """Delete every message of a dead-letter queue (needs --yes)."""
    name = dlq_ops.resolve(queue)
    if not yes:
        raise OpsError(f"not purging {name} without --yes", exit_code=2)
    return {"queue": name, "messages": dlq_ops.purge(config, queue)}


# ------------------------------------------------------------ queues


@cli.group(cls=OpsGroup)
def queues():
    """Darkroom's durable queues (classic or quorum: AMQP_QUEUE_TYPE)."""


def _migrate_lines(moved: list[dict]) -> list[str]:
    if not moved:
        return ["every Darkroom queue is declared so already"]
    return [f"{m['queue']}: {m['from']} -> {m['to']}"
            + (f" ({plural(m['messages'], 'message')})" if m.get("messages") is not None else "")
            for m in moved]


@queues.command("migrate")
@click.option("--to", "to", required=True, type=click.Choice(["quorum", "classic"]),
              help="The type to move the queues to.")
@click.option("--dry-run", is_flag=True, help="Only list the queues that would move.")
@output(_migrate_lines)
@pass_config
def queues_migrate(config, to, dry_run):
    """Move every Darkroom queue of the vhost to quorum (or back to classic),
    or to a new AMQP_DELIVERY_LIMIT, with no message lost. Stop the services
    and the gateway first (docs/runbooks/quorum-queues.md)."""
    if dry_run:
        return [{"queue": q["queue"], "from": q["type"], "to": to, "messages": None}
                for q in queue_ops.plan(config, to)]
    return queue_ops.migrate(config, to)


# ------------------------------------------------------------ users and keys


@cli.group(cls=OpsGroup)
def users():
    """Accounts (through the auth service; deleting: the privacy service's erasure)."""


def _admin_lines(answer: dict) -> list[str]:
    state = "now an administrator" if answer.get("is_admin") else "no longer an administrator"
    lines = [f"{answer['email']} is {state} (user {answer.get('user_id')})"]
    if answer.get("api_keys_revoked"):
        lines.append(f"{answer['api_keys_revoked']} API key(s) revoked: administrators use a "
                     "session and TOTP only")
    if answer.get("otpauth_uri"):
        lines.append("Two-factor enrolment (scan or paste into an authenticator app):")
        lines.append(answer["otpauth_uri"])
    return lines


@users.command("grant-admin")
@click.argument("email")
@output(_admin_lines)
@pass_config
def grant_admin(config, email):
    """Make a user an administrator."""
    return {"email": email, **user_ops.set_admin(config, email, True)}


@users.command("revoke-admin")
@click.argument("email")
@output(_admin_lines)
@pass_config
def revoke_admin(config, email):
    """Take a user's administrator rights away."""
    return {"email": email, **user_ops.set_admin(config, email, False)}


@users.command("list")
@click.option("--email", metavar="TEXT", help="Only addresses containing TEXT.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100))
@click.option("--cursor", metavar="C", help="The next page (printed after a full page).")
@output(user_ops.list_lines)
@pass_config
def users_list(config, email, limit, cursor):
    """Accounts, newest first, with their state and live credentials."""
    return user_ops.list_users(config, email, limit, cursor)


@users.command("show")
@click.argument("user")
@output(user_ops.show_lines)
@pass_config
def users_show(config, user):
    """One account (by id or email): its state and live credentials."""
    return user_ops.show(config, user)


@users.command("disable")
@click.argument("user")
@output(user_ops.disabled_lines)
@pass_config
def users_disable(config, user):
    """Stop an account signing in, and revoke its sessions and API keys now."""
    return user_ops.set_disabled(config, user, True)


@users.command("enable")
@click.argument("user")
@output(user_ops.disabled_lines)
@pass_config
def users_enable(config, user):
    """Let a disabled account sign in again (its revoked keys stay revoked)."""
    return user_ops.set_disabled(config, user, False)


@users.command("delete")
@click.argument("user")
@click.option("--reason", required=True, help="Why (kept in the erasure request's log).")
@click.option("--yes", is_flag=True, help="Really ask for the erasure.")
@output(user_ops.delete_lines)
@pass_config
def users_delete(config, user, reason, yes):
    """Erase an account: the privacy service's erasure, as if its owner asked
    (grace period and mailed cancel link, then every service's part and a
    certificate). Needs --yes."""
    if not yes:
        raise OpsError(f"not erasing {user} without --yes", exit_code=2)
    return user_ops.delete(config, user, reason)


@users.command("delete-minor")
@click.argument("user")
@click.option("--yes", is_flag=True, help="Really erase the account now.")
@output(user_ops.delete_minor_lines)
@pass_config
def users_delete_minor(config, user, yes):
    """Erase at once an account a guardian reported as a minor's: the same
    erasure (every service's part, certificate) with no grace period and no
    cancel link. Needs --yes."""
    if not yes:
        raise OpsError(f"not erasing {user} without --yes", exit_code=2)
    return user_ops.delete_minor(config, user)


@cli.group(cls=OpsGroup)
def keys():
    """API keys (through the auth service)."""


@keys.command("revoke")
@click.argument("key", required=False, metavar="[KEY_ID|PREFIX]")
@click.option("--user", metavar="USER", help="Every live key of this account (id or email).")
@output(key_ops.revoke_lines)
@pass_config
def keys_revoke(config, key, user):
    """Revoke an API key (by id, by prefix such as drk_abcd1234, or pasted
    whole), or every key of --user."""
    return key_ops.revoke(config, key, user)


# ------------------------------------------------------------ storage and billing


@cli.group(cls=OpsGroup)
def storage():
    """Stored files (through the storage service): retention purge and usage."""


@storage.command("purge")
@click.option("--dry-run", is_flag=True, help="Count what is past retention; delete nothing.")
@click.option("--batch-size", type=click.IntRange(1, 10000),
              help="Objects per batch (default: the service's STORAGE_PURGE_BATCH_SIZE).")
@output(lambda result: [storage_ops.purge_summary(result)])
@pass_config
def storage_purge(config, dry_run, batch_size):
    """Purge every object past its retention now (the service also does it every
    minute), batch by batch with a progress bar."""
    return storage_ops.purge(config, dry_run, batch_size,
                             progress=lambda total: progress(label="purging", length=total))


@storage.command("report")
@output(storage_ops.report_lines)
@pass_config
def storage_report(config):
    """Objects and bytes by kind and by age, and what awaits the purge."""
    return storage_ops.report(config)


def _rekey_lines(result: dict) -> list[str]:
    if result.get("backend") != "fs":
        return ["nothing to re-key: the s3 backend's objects are encrypted by the store "
                "(server-side encryption, STORAGE_S3_SSE)"]
    return storage_ops.rekey_summary(result["counts"], result["key_id"], result["forgotten"])


@storage.command("rekey")
@click.option("--storage-config", type=click.Path(dir_okay=False),
              help="The storage service's config (default: deploy/config/storage.yaml).")
@output(_rekey_lines, failed=lambda result: bool(result.get("counts", {}).get("failed")))
def storage_rekey(storage_config):
    """Re-wrap every stored file's data key under the newest key of
    STORAGE_ENCRYPTION_KEYS (and seal files from before encryption).
    Resumable: run it again after an interruption. fs backend only; run it
    where the storage service's files are. Exit 1 when a file failed."""
    backend = storage_ops.storage_backend(storage_config)
    if backend.name != "fs":
        return {"backend": backend.name}
    total = sum(1 for _ in backend.keys())
    errors: list[str] = []
    with progress(backend.keys(), "re-keying", length=total) as bar:
        counts = storage_ops.rekey(backend, bar, lambda key, msg: errors.append(f"{key}: {msg}"))
    for line in errors:
        click.echo(f"failed: {line}", err=True)
    forgotten = [] if counts["failed"] else backend.files.forget_old_keys()
    return {"backend": "fs", "counts": counts, "key_id": backend.files.keys.current_id,
            "forgotten": forgotten, "errors": errors}


@cli.group(cls=OpsGroup)
def billing():
    """The credit ledger (through the billing service): audit and adjustments."""


@billing.command("verify")
@click.option("--user", "user", metavar="ID", help="Check one account (default: all).")
@output(billing_ops.verify_lines, failed=lambda result: bool(result.get("problems")))
@pass_config
def billing_verify(config, user):
    """Check the ledger: balances, holds, lots and the balance chain, a page of
    accounts at a time with a progress bar. Exit 1 on problems."""
    return billing_ops.verify(config, user, progress=lambda total: progress(
        label="verifying the ledger", length=total))


@billing.command("adjust")
@click.option("--user", "user", metavar="ID", required=True, help="The user's id.")
@click.option("--credits", type=int, required=True,
              help="Credits to add (negative: to take away); not 0.")
@click.option("--reason", required=True, help="Why (kept in the ledger and shown to the user).")
@click.option("--idempotency-key", "key", metavar="K",
              help="Run again with the same key to retry without crediting twice "
                   "(default: a new key, printed).")
@output(lambda r: [billing_ops.adjust_line(r["entry"], r["user"], r["idempotency_key"])])
@pass_config
def billing_adjust(config, user, credits, reason, key):
    """Credit or debit an account by hand (an `adjustment` ledger entry)."""
    key = key if key is not None else billing_ops.new_idempotency_key()
    entry = billing_ops.adjust(config, user, credits, reason, key)
    return {"entry": entry, "user": user, "idempotency_key": key}


@billing.command("refund")
@click.argument("order")
@click.option("--amount", type=int, metavar="N",
              help="Minor units to refund (default: all that is not refunded yet).")
@output(lambda order: [billing_ops.refund_line(order)])
@pass_config
def billing_refund(config, order, amount):
    """Refund a PayPal order through PayPal; its credits are taken back as for any refund."""
    return billing_ops.refund(config, order, amount)


# ------------------------------------------------------------ jobs


@cli.group(cls=OpsGroup)
def jobs():
    """Generation jobs (through the generation service): find failed work, run it
    again, cancel what has not started."""


SINCE_HELP = "Changed since: an age (30m, 2h, 3d) or an ISO time (UTC without an offset)."


@jobs.command("list")
@click.option("--status", type=click.Choice([state.value for state in JobState]),
              help="Only jobs in this state.")
@click.option("--since", metavar="AGE|TIME", help=SINCE_HELP)
@click.option("--reason", metavar="CODE", help="Only jobs that ended with this error code "
                                                "(e.g. provider_unavailable).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000))
@output(lambda found: jobs_ops.list_lines(found, click.get_current_context().params["limit"]))
@pass_config
def jobs_list(config, status, since, reason, limit):
    """Jobs by state, age and error code, the longest unchanged first."""
    since_at = jobs_ops.parse_since(since) if since else None
    return jobs_ops.find(config, status, since_at, reason, limit)


def _outcomes(result: dict, verb: str, done: str) -> list[str]:
    """A replay's or a cancel's answer: a dry run's plan, or the jobs found
    by filter and one summary of the outcomes."""
    if result.get("found") == []:
        return ["no failed jobs match"]
    lines = jobs_ops.list_lines(result["found"], result.get("limit")) if result.get("found") else []
    if result.get("dry_run"):
        ids = result["job_ids"]
        return lines + [f"dry run: would {verb} {plural(len(ids), 'job')}"
                        + ("" if result.get("by_filter") else ": " + ", ".join(ids))]
    outcomes = [jobs_ops.Outcome(**o) for o in result["outcomes"]]
    return lines + jobs_ops.summary_lines(outcomes, done)


def _some_failed(result: dict) -> bool:
    return not all(o["done"] for o in result.get("outcomes") or [])


@jobs.command("replay")
@click.argument("job_ids", nargs=-1, metavar="[JOB_ID]...")
@click.option("--status", type=click.Choice(["failed"]),
              help="Select the jobs to replay by filter (only failed jobs can be replayed).")
@click.option("--since", metavar="AGE|TIME", help=SINCE_HELP + " Needed with a filter.")
@click.option("--reason", metavar="CODE", help="Only jobs that failed with this error code.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 10000),
              help="At most this many jobs by filter.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; replay nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@output(lambda result: _outcomes(result, "replay", "replayed"), failed=_some_failed)
@pass_config
def jobs_replay(config, job_ids, status, since, reason, limit, dry_run, yes):
    """Run failed jobs again (a new attempt each; credits are held again and charged once).

    Name the jobs, or select them with --since (and --reason). Exit 1 when
    any job could not be replayed."""
    by_filter = bool(status or since or reason)
    if job_ids and by_filter:
        raise OpsError("give job ids or a filter (--status/--since/--reason), not both",
                       exit_code=2)
    found = None
    if job_ids:
        ids = [jobs_ops.job_id(j) for j in dict.fromkeys(job_ids)]
    elif since:
        found = jobs_ops.find(config, "failed", jobs_ops.parse_since(since), reason, limit)
        if not found:
            return {"found": [], "outcomes": []}
        ids = [str(j["id"]) for j in found]
    else:
        raise OpsError("name the jobs to replay, or select failed ones with --since "
                       "(and --reason)", exit_code=2)
    if dry_run:
        return {"dry_run": True, "by_filter": by_filter, "job_ids": ids, "found": found,
                "limit": limit}
    if not yes:
        click.confirm(f"Replay {jobs_ops.plural(len(ids), 'job')}?", abort=True, err=True)
    with progress(ids, "replaying") as bar:
        outcomes = jobs_ops.replay(config, bar)
    return {"found": found, "limit": limit, "outcomes": [vars(o) for o in outcomes]}


@jobs.command("cancel")
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB_ID...")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@output(lambda result: _outcomes(result, "cancel", "cancelled"), failed=_some_failed)
@pass_config
def jobs_cancel(config, job_ids, yes):
    """Cancel jobs that have not started (any account's), through the
    generation service's cancel rule: billing releases their holds. Exit 1
    when any job could not be cancelled."""
    ids = [jobs_ops.job_id(j) for j in dict.fromkeys(job_ids)]
    if not yes:
        click.confirm(f"Cancel {jobs_ops.plural(len(ids), 'job')}?", abort=True, err=True)
    with progress(ids, "cancelling") as bar:
        outcomes = jobs_ops.cancel(config, bar)
    return {"outcomes": [vars(o) for o in outcomes]}


# ------------------------------------------------------------ privacy


@cli.group(cls=OpsGroup)
def webhooks():
    """Job webhook deliveries (through the generation service): see them, send them again."""


@webhooks.command("list")
@click.option("--job", "job_id", metavar="ID", help="Only this job's deliveries.")
@click.option("--user", "user_id", metavar="ID", help="Only this user's deliveries.")
@click.option("--status", type=click.Choice(WEBHOOK_DELIVERY_STATUSES),
              help="Only deliveries in this state.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000))
@output(lambda items: webhook_ops.list_lines(items, click.get_current_context().params["limit"]))
@pass_config
def webhooks_list(config, job_id, user_id, status, limit):
    """Webhook deliveries, newest first: event, state, attempts, the last answer."""
    job_id = jobs_ops.job_id(job_id) if job_id else None
    user_id = id_argument(user_id, "user id") if user_id else None
    return webhook_ops.find(config, job_id, user_id, status, limit)


@webhooks.command("redeliver")
@click.argument("delivery_ids", nargs=-1, required=True, metavar="DELIVERY_ID...")
@output(webhook_ops.summary_lines, failed=lambda outcomes: not all(o["queued"] for o in outcomes))
@pass_config
def webhooks_redeliver(config, delivery_ids):
    """Send ended deliveries again (same body, same webhook-id) at the service's next tick.

    Exit 1 when any could not be queued (unknown, or still pending)."""
    ids = [webhook_ops.delivery_id(d) for d in dict.fromkeys(delivery_ids)]
    with progress(ids, "queueing") as bar:
        return [vars(o) for o in webhook_ops.redeliver(config, bar)]


@cli.group(cls=OpsGroup)
def privacy():
    """Privacy requests and policy versions (through the privacy service)."""


def _privacy_failed(result: dict) -> bool:
    return bool(result.get("failed_parts") or result.get("breaches_overdue")
                or any(r.get("overdue") for r in result.get("open") or []))


@privacy.command("report")
@output(privacy_ops.report_lines, failed=_privacy_failed)
@pass_config
def privacy_report(config):
    """Open requests by due date, overdue first, and the parts that failed.
    Exit 1 when a request is overdue, a part failed or a breach incident is
    still open 48 hours after detection."""
    return privacy_ops.report(config)


def _retry_lines(result: dict) -> list[str]:
    asked = ", ".join(result.get("asked_again") or []) or "nobody (the archive is built again)"
    return [f"request {result['request_id']}: asked again: {asked}"]


@privacy.command("retry")
@click.argument("request_id")
@output(_retry_lines)
@pass_config
def privacy_retry(config, request_id):
    """Ask the services again for the parts of a request that did not answer
    (with a fresh budget), or build a failed export's archive again."""
    return privacy_ops.retry(config, request_id)


@privacy.command("publish-policy")
@click.option("--version", "version", required=True, help="The new version's name (e.g. 2026-12).")
@click.option("--material/--minor", "material", required=True,
              help="--material: every user must accept it again (/v1/me tells them); "
                   "--minor: no new acceptance needed.")
@click.option("--summary", required=True, help="What changed, in a sentence or two.")
@output(lambda policy: [f"policy {policy['version']} published "
                        f"({'material: users must accept it' if policy.get('material') else 'minor'})"])
@pass_config
def privacy_publish_policy(config, version, material, summary):
    """Publish a new privacy policy version; it becomes the current one."""
    return privacy_ops.publish_policy(config, version, material, summary)


# ------------------------------------------------------------ doctor


@cli.command("doctor", cls=click.Command)
@click.option("--only", "only", multiple=True, metavar="NAME",
              help="Only these checks' groups (config, rabbitmq, <service>...); repeatable.")
@output(doctor_ops.lines, failed=doctor_ops.failed)
@click.pass_context
def doctor(ctx, only):
    """Check the deployment: every service's configuration and settings,
    RabbitMQ and its management API, each database and its migrations, the
    object store, the mail server, secrets and keys. Says what is wrong and
    how to fix it; exit 1 on any problem."""
    return doctor_ops.run(ctx.meta.get("darkroom_ops.config_file"), only, progress=bar)


cli.add_command(breach_ops.breach)
cli.add_command(backup_ops.backup)  # darkroom-ops backup: ops/backup.py
cli.add_command(field_ops.fields)  # darkroom-ops fields: ops/fields.py


def main() -> None:
    # py-amqp warns about frames that arrive while a channel closes: noise here
    logging.getLogger("amqp").setLevel(logging.ERROR)
    cli(prog_name="darkroom-ops")


if __name__ == "__main__":
    main()
