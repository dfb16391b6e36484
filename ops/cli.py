"""``darkroom-ops``: the operators' command line.

    darkroom-ops dlq list
    darkroom-ops dlq show <queue> [--limit N] [--json] [--traceback]
    darkroom-ops dlq replay <queue> [--limit N]
    darkroom-ops dlq purge <queue> --yes
    darkroom-ops users grant-admin <email>
    darkroom-ops users revoke-admin <email>
    darkroom-ops storage purge [--dry-run] [--batch-size N]
    darkroom-ops storage report [--json]

Settings come from deploy/config/ops.yaml (``--config`` for another file) and
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

from ops import dlq as dlq_ops  # noqa: E402
from ops import storage as storage_ops  # noqa: E402
from ops import users as user_ops  # noqa: E402
from ops.config import load_ops_config  # noqa: E402
from ops.errors import OpsError  # noqa: E402
from services.common.errors import DomainError  # noqa: E402


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


@click.group(cls=OpsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              envvar="DARKROOM_OPS_CONFIG", help="Config file (default deploy/config/ops.yaml).")
@click.pass_context
def cli(ctx, config_file):
    """Darkroom operations: dead letters, administrators and stored files."""
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
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_config
def storage_report(config, as_json):
    """Objects and bytes by kind and by age, and what awaits the purge."""
    result = storage_ops.report(config)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for line in storage_ops.report_lines(result):
        click.echo(line)


def main() -> None:
    # py-amqp warns about frames that arrive while a channel closes: noise here
    logging.getLogger("amqp").setLevel(logging.ERROR)
    cli(prog_name="darkroom-ops")


if __name__ == "__main__":
    main()
