"""``darkroom-ops``: the operators' command line.

    darkroom-ops --version
    darkroom-ops dlq list
    darkroom-ops dlq show <queue> [--limit N] [--json] [--traceback]
    darkroom-ops dlq replay <queue> [--limit N]
    darkroom-ops dlq purge <queue> --yes
    darkroom-ops dlq restamp (<queue> | --all)
    darkroom-ops users grant-admin <email>
    darkroom-ops users revoke-admin <email>
    darkroom-ops storage purge [--dry-run] [--batch-size N]
    darkroom-ops storage report [--json]
    darkroom-ops storage rekey [--storage-config PATH]
    darkroom-ops billing verify [--user ID] [--json]
    darkroom-ops billing adjust --user ID --credits N --reason TEXT [--idempotency-key K]
    darkroom-ops jobs list [--status S] [--since 2h] [--reason CODE] [--limit N] [--json]
    darkroom-ops jobs replay (JOB_ID... | --status failed --since 2h [--reason CODE])
                             [--dry-run] [--yes]
    darkroom-ops webhooks list [--job ID] [--user ID] [--status S] [--limit N] [--json]
    darkroom-ops webhooks redeliver DELIVERY_ID... [--json]
    darkroom-ops privacy report [--json]
    darkroom-ops privacy retry <request id>
    darkroom-ops privacy publish-policy --version V (--material | --minor) --summary TEXT

Settings come from deploy/config/ops.yaml (``--config`` for another file) and
the environment (``AMQP_URI``, ``RABBIT_MANAGEMENT_URL``). Exit codes: 0 done,
1 failed (the message says why), 2 bad usage.
"""

from __future__ import annotations

import json
import logging
import sys
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
from ops import jobs as jobs_ops  # noqa: E402
from ops import privacy as privacy_ops  # noqa: E402
from ops import storage as storage_ops  # noqa: E402
from ops import users as user_ops  # noqa: E402
from ops import webhooks as webhook_ops  # noqa: E402
from ops.config import load_ops_config  # noqa: E402
from ops.errors import OpsError, id_argument  # noqa: E402
from services.common.contracts.generation import (  # noqa: E402
    WEBHOOK_DELIVERY_STATUSES,
    JobState,
)
from services.common.errors import DomainError  # noqa: E402
from services.common.version import darkroom_version  # noqa: E402


class OpsGroup(click.Group):
    """Expected failures become a message and an exit code, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OpsError as exc:
            click.echo(f"error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except DomainError as exc:
            click.echo(f"error: {exc.message} ({exc.code})", err=True)
            ctx.exit(1)


pass_config = click.make_pass_decorator(dict)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def show(result, as_json: bool, lines) -> None:
    """A command's ``result``: as JSON with ``--json``, else as ``lines(result)``."""
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        for line in lines(result):
            click.echo(line)


@click.group(cls=OpsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(darkroom_version(), "--version", prog_name="darkroom-ops",
                      message="%(prog)s %(version)s")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              envvar="DARKROOM_OPS_CONFIG", help="Config file (default deploy/config/ops.yaml).")
@click.pass_context
def cli(ctx, config_file):
    """Darkroom operations: dead letters, administrators, stored files, credits and jobs."""
    ctx.obj = load_ops_config(config_file)


@cli.group(cls=OpsGroup)
def dlq():
    """Dead-letter queues (messages event handlers gave up on)."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_config
def dlq_list(config, as_json):
    """Every dlq.* queue of the vhost with its message count."""
    queues = dlq_ops.list_dlqs(config)
    if as_json:
        click.echo(json.dumps([{"queue": q, "messages": n} for q, n in queues], indent=2))
        return
    if not queues:
        click.echo("no dead-letter queues")
        return
    width = max(len(q) for q, _ in queues)
    click.echo(f"{'QUEUE'.ljust(width)}  MESSAGES")
    for queue, count in queues:
        click.echo(f"{queue.ljust(width)}  {count}")


@dlq.command("show")
@click.argument("queue")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--traceback", "with_traceback", is_flag=True, help="Include the handler's traceback.")
@pass_config
def dlq_show(config, queue, limit, as_json, with_traceback):
    """Peek at dead letters without consuming them (QUEUE: dlq.<q> or <q>)."""
    letters = dlq_ops.show(config, queue, limit)
    if as_json:
        items = [letter.to_dict() for letter in letters]
        if not with_traceback:
            for item in items:
                item.pop("traceback")
        click.echo(json.dumps(items, indent=2, default=str))
        return
    if not letters:
        click.echo(f"{dlq_ops.resolve(queue)} is empty")
        return
    for number, letter in enumerate(letters, 1):
        body = letter.body if isinstance(letter.body, str) else json.dumps(letter.body, default=str)
        click.echo(f"#{number} {letter.event or '(unknown event)'}")
        for label, value in (
            ("error", letter.error),
            ("attempts", letter.attempts),
            ("replays", letter.replays),
            ("dead-lettered at", letter.dead_lettered_at),
            ("expires at", letter.expires_at),
            ("original queue", letter.original_queue),
            ("correlation id", letter.correlation_id),
            ("content type", letter.content_type),
            ("body", body),
        ):
            click.echo(f"  {label + ':':<18}{'-' if value is None else value}")
        if with_traceback and letter.traceback:
            click.echo("  traceback:")
            click.echo("    " + letter.traceback.rstrip().replace("\n", "\n    "))
        click.echo()


@dlq.command("replay")
@click.argument("queue")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many (default: all).")
@pass_config
def dlq_replay(config, queue, limit):
    """Send dead letters back to the queue that failed them, and only to it."""
    replayed = dlq_ops.replay(config, queue, limit)
    click.echo(f"replayed {replayed} message{'s' if replayed != 1 else ''} from {dlq_ops.resolve(queue)}")


@dlq.command("restamp")
@click.argument("queue", required=False)
@click.option("--all", "every", is_flag=True, help="Every dlq.* queue of the vhost.")
@pass_config
def dlq_restamp(config, queue, every):
    """Requeue dead letters older than the TTL policy so they expire (once, after upgrading)."""
    if bool(queue) == every:
        raise OpsError("name one queue or pass --all", exit_code=2)
    names = [name for name, _ in dlq_ops.list_dlqs(config)] if every else [queue]
    for name in names:
        moved = dlq_ops.restamp(config, name)
        click.echo(f"restamped {moved} message{'s' if moved != 1 else ''} in {dlq_ops.resolve(name)}")


@dlq.command("purge")
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Really delete the messages.")
@pass_config
def dlq_purge(config, queue, yes):
    """Delete every message of a dead-letter queue (needs --yes)."""
    name = dlq_ops.resolve(queue)
    if not yes:
        raise OpsError(f"not purging {name} without --yes", exit_code=2)
    purged = dlq_ops.purge(config, queue)
    click.echo(f"purged {purged} message{'s' if purged != 1 else ''} from {name}")


@cli.group(cls=OpsGroup)
def users():
    """Accounts (through the auth service)."""


def _set_admin(config, email: str, is_admin: bool):
    answer = user_ops.set_admin(config, email, is_admin)
    state = "now an administrator" if answer.get("is_admin") else "no longer an administrator"
    click.echo(f"{email} is {state} (user {answer.get('user_id')})")
    if answer.get("api_keys_revoked"):
        click.echo(f"{answer['api_keys_revoked']} API key(s) revoked: administrators use a "
                   "session and TOTP only")
    if answer.get("otpauth_uri"):
        click.echo("Two-factor enrolment (scan or paste into an authenticator app):")
        click.echo(answer["otpauth_uri"])


@users.command("grant-admin")
@click.argument("email")
@pass_config
def grant_admin(config, email):
    """Make a user an administrator."""
    _set_admin(config, email, True)


@users.command("revoke-admin")
@click.argument("email")
@pass_config
def revoke_admin(config, email):
    """Take a user's administrator rights away."""
    _set_admin(config, email, False)


@cli.group(cls=OpsGroup)
def storage():
    """Stored files (through the storage service): retention purge and usage."""


@storage.command("purge")
@click.option("--dry-run", is_flag=True, help="Count what is past retention; delete nothing.")
@click.option("--batch-size", type=click.IntRange(1, 10000),
              help="Objects per batch (default: the service's STORAGE_PURGE_BATCH_SIZE).")
@pass_config
def storage_purge(config, dry_run, batch_size):
    """Purge every object past its retention now (the service also does it every minute)."""
    click.echo(storage_ops.purge_summary(storage_ops.purge(config, dry_run, batch_size)))


@storage.command("report")
@json_option
@pass_config
def storage_report(config, as_json):
    """Objects and bytes by kind and by age, and what awaits the purge."""
    show(storage_ops.report(config), as_json, storage_ops.report_lines)


storage.add_command(storage_ops.rekey_command())


@cli.group(cls=OpsGroup)
def billing():
    """The credit ledger (through the billing service): audit and adjustments."""


@billing.command("verify")
@click.option("--user", "user", metavar="ID", help="Check one account (default: all).")
@json_option
@pass_config
def billing_verify(config, user, as_json):
    """Check the ledger: balances, holds, lots and the balance chain. Exit 1 on problems."""
    result = billing_ops.verify(config, user)
    show(result, as_json, billing_ops.verify_lines)
    if result.get("problems"):
        raise click.exceptions.Exit(1)


@billing.command("adjust")
@click.option("--user", "user", metavar="ID", required=True, help="The user's id.")
@click.option("--credits", type=int, required=True,
              help="Credits to add (negative: to take away); not 0.")
@click.option("--reason", required=True, help="Why (kept in the ledger and shown to the user).")
@click.option("--idempotency-key", "key", metavar="K",
              help="Run again with the same key to retry without crediting twice "
                   "(default: a new key, printed).")
@pass_config
def billing_adjust(config, user, credits, reason, key):
    """Credit or debit an account by hand (an `adjustment` ledger entry)."""
    key = key if key is not None else billing_ops.new_idempotency_key()
    entry = billing_ops.adjust(config, user, credits, reason, key)
    click.echo(billing_ops.adjust_line(entry, user, key))


@cli.group(cls=OpsGroup)
def jobs():
    """Generation jobs (through the generation service): find failed work, run it again."""


SINCE_HELP = "Changed since: an age (30m, 2h, 3d) or an ISO time (UTC without an offset)."


@jobs.command("list")
@click.option("--status", type=click.Choice([state.value for state in JobState]),
              help="Only jobs in this state.")
@click.option("--since", metavar="AGE|TIME", help=SINCE_HELP)
@click.option("--reason", metavar="CODE", help="Only jobs that ended with this error code "
                                                "(e.g. provider_unavailable).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000))
@json_option
@pass_config
def jobs_list(config, status, since, reason, limit, as_json):
    """Jobs by state, age and error code, the longest unchanged first."""
    since_at = jobs_ops.parse_since(since) if since else None
    found = jobs_ops.find(config, status, since_at, reason, limit)
    show(found, as_json, lambda jobs: jobs_ops.list_lines(jobs, limit))


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
@pass_config
def jobs_replay(config, job_ids, status, since, reason, limit, dry_run, yes):
    """Run failed jobs again (a new attempt each; credits are held again and charged once).

    Name the jobs, or select them with --since (and --reason). Exit 1 when
    any job could not be replayed."""
    by_filter = bool(status or since or reason)
    if job_ids and by_filter:
        raise OpsError("give job ids or a filter (--status/--since/--reason), not both",
                       exit_code=2)
    if job_ids:
        ids = [jobs_ops.job_id(j) for j in dict.fromkeys(job_ids)]
    elif since:
        found = jobs_ops.find(config, "failed", jobs_ops.parse_since(since), reason, limit)
        if not found:
            click.echo("no failed jobs match")
            return
        for line in jobs_ops.list_lines(found, limit):
            click.echo(line)
        ids = [str(j["id"]) for j in found]
    else:
        raise OpsError("name the jobs to replay, or select failed ones with --since "
                       "(and --reason)", exit_code=2)
    if dry_run:
        click.echo(f"dry run: would replay {jobs_ops.plural(len(ids), 'job')}"
                   + ("" if by_filter else ": " + ", ".join(ids)))
        return
    if not yes:
        click.confirm(f"Replay {jobs_ops.plural(len(ids), 'job')}?", abort=True, err=True)
    with click.progressbar(ids, label="replaying", file=sys.stderr, show_pos=True) as bar:
        outcomes = jobs_ops.replay(config, bar)
    for line in jobs_ops.summary_lines(outcomes):
        click.echo(line)
    if not all(o.replayed for o in outcomes):
        raise click.exceptions.Exit(1)


@cli.group(cls=OpsGroup)
def webhooks():
    """Job webhook deliveries (through the generation service): see them, send them again."""


@webhooks.command("list")
@click.option("--job", "job_id", metavar="ID", help="Only this job's deliveries.")
@click.option("--user", "user_id", metavar="ID", help="Only this user's deliveries.")
@click.option("--status", type=click.Choice(WEBHOOK_DELIVERY_STATUSES),
              help="Only deliveries in this state.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000))
@json_option
@pass_config
def webhooks_list(config, job_id, user_id, status, limit, as_json):
    """Webhook deliveries, newest first: event, state, attempts, the last answer."""
    job_id = jobs_ops.job_id(job_id) if job_id else None
    user_id = id_argument(user_id, "user id") if user_id else None
    found = webhook_ops.find(config, job_id, user_id, status, limit)
    show(found, as_json, lambda items: webhook_ops.list_lines(items, limit))


@webhooks.command("redeliver")
@click.argument("delivery_ids", nargs=-1, required=True, metavar="DELIVERY_ID...")
@json_option
@pass_config
def webhooks_redeliver(config, delivery_ids, as_json):
    """Send ended deliveries again (same body, same webhook-id) at the service's next tick.

    Exit 1 when any could not be queued (unknown, or still pending)."""
    ids = [webhook_ops.delivery_id(d) for d in dict.fromkeys(delivery_ids)]
    with click.progressbar(ids, label="queueing", file=sys.stderr, show_pos=True) as bar:
        outcomes = webhook_ops.redeliver(config, bar)
    show(webhook_ops.as_json(outcomes) if as_json else outcomes, as_json,
         webhook_ops.summary_lines)
    if not all(o.queued for o in outcomes):
        raise click.exceptions.Exit(1)


@cli.group(cls=OpsGroup)
def privacy():
    """Privacy requests and policy versions (through the privacy service)."""


@privacy.command("report")
@json_option
@pass_config
def privacy_report(config, as_json):
    """Open requests by due date, overdue first, and the parts that failed.
    Exit 1 when a request is overdue, a part failed or a breach incident is
    still open 48 hours after detection."""
    result = privacy_ops.report(config)
    show(result, as_json, privacy_ops.report_lines)
    if result.get("failed_parts") or result.get("breaches_overdue") or any(
            r.get("overdue") for r in result.get("open") or []):
        raise click.exceptions.Exit(1)


@privacy.command("retry")
@click.argument("request_id")
@pass_config
def privacy_retry(config, request_id):
    """Ask the services again for the parts of a request that did not answer
    (with a fresh budget), or build a failed export's archive again."""
    result = privacy_ops.retry(config, request_id)
    asked = ", ".join(result.get("asked_again") or []) or "nobody (the archive is built again)"
    click.echo(f"request {result['request_id']}: asked again: {asked}")


@privacy.command("publish-policy")
@click.option("--version", "version", required=True, help="The new version's name (e.g. 2026-12).")
@click.option("--material/--minor", "material", required=True,
              help="--material: every user must accept it again (/v1/me tells them); "
                   "--minor: no new acceptance needed.")
@click.option("--summary", required=True, help="What changed, in a sentence or two.")
@pass_config
def privacy_publish_policy(config, version, material, summary):
    """Publish a new privacy policy version; it becomes the current one."""
    policy = privacy_ops.publish_policy(config, version, material, summary)
    kind = "material: users must accept it" if policy.get("material") else "minor"
    click.echo(f"policy {policy['version']} published ({kind})")


cli.add_command(breach_ops.breach)
cli.add_command(backup_ops.backup)  # darkroom-ops backup: ops/backup.py


def main() -> None:
    # py-amqp warns about frames that arrive while a channel closes: noise here
    logging.getLogger("amqp").setLevel(logging.ERROR)
    cli(prog_name="darkroom-ops")


if __name__ == "__main__":
    main()
