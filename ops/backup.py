"""``darkroom-ops backup``: backups of every database and the object store.

    darkroom-ops backup run [--repeat]        take a set now (--repeat: then every
                                              BACKUP_INTERVAL_SECONDS, for ever)
    darkroom-ops backup verify [SET] [--json] check the newest set (or SET)
    darkroom-ops backup list [--json]         the sets, and why each is kept
    darkroom-ops backup check [--max-age S]   exit 1 unless the newest set is younger
                                              than S (default: 2 x BACKUP_INTERVAL_SECONDS)
    darkroom-ops backup restore [SET] --yes [--erasure-log-db URL]...
                                              restore into the configured databases
                                              and object store, then replay erasures

The work is in ``ops/backups/``; the settings (``BACKUP_*``) in
deploy/config/backup.yaml; the runbook in docs/operations.md.
"""

from __future__ import annotations

import json
import logging
import time

import click

from ops.backups import jobs
from ops.errors import OpsError
from services.common.config import config_path, load_config
from services.common.secrets import ConfigurationRefused, refuse_insecure_config

log = logging.getLogger(__name__)


def _settings(_ops_config: dict) -> jobs.BackupSettings:
    """deploy/config/backup.yaml (``DARKROOM_CONFIG_DIR`` for another directory),
    refused in production without a real ``BACKUP_ENCRYPTION_KEY``."""
    path = config_path("backup")
    try:
        config = load_config(path)
        refuse_insecure_config(config, "darkroom-ops backup", path)
        return jobs.BackupSettings.from_config(config)
    except FileNotFoundError:
        raise OpsError(f"config file not found: {path}") from None
    except (ConfigurationRefused, jobs.BackupError) as exc:
        raise OpsError(str(exc), exit_code=2) from None


def _echo(line: str) -> None:
    click.echo(line, err=True)


@click.group()
def backup():
    """Backups: every service's database and the object store, encrypted."""


@backup.command("run")
@click.option("--repeat", is_flag=True,
              help="Keep running: a set every BACKUP_INTERVAL_SECONDS (the compose service).")
@click.pass_obj
def backup_run(config, repeat):
    """Take a backup set now, then rotate the old ones."""
    settings = _settings(config)
    while True:
        started = time.monotonic()
        try:
            manifest = jobs.run(settings, progress=_echo)
            click.echo(f"backup set {manifest['name']}: {len(manifest['databases'])} databases, "
                       f"{manifest['objects']['count']} objects")
        except jobs.BackupError as exc:
            if not repeat:
                raise OpsError(str(exc)) from None
            click.echo(f"error: backup failed: {exc}", err=True)
        except Exception:  # a database or store down: try again at the next interval
            if not repeat:
                raise
            log.exception("backup failed")
            click.echo("error: backup failed (see the traceback above)", err=True)
        if not repeat:
            return
        time.sleep(max(0.0, settings.interval_seconds - (time.monotonic() - started)))


@backup.command("verify")
@click.argument("set_name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def backup_verify(config, set_name, as_json):
    """Check a set (the newest by default): every database, every object."""
    try:
        result = jobs.verify(_settings(config), set_name, progress=_echo)
    except jobs.BackupError as exc:
        raise OpsError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for service, summary in result["databases"].items():
            click.echo(f"{service}: restorable ({summary})")
        click.echo(f"objects: {result['objects']} verified")
        for problem in result["problems"]:
            click.echo(f"PROBLEM: {problem}")
    if result["problems"]:
        raise OpsError(f"backup set {result['set']} has {len(result['problems'])} problem(s)")
    if not as_json:
        click.echo(f"backup set {result['set']} is complete and restorable")


@backup.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def backup_list(config, as_json):
    """The backup sets, oldest first, and which rotation keeps each."""
    listed = jobs.list_sets(_settings(config))
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    if not listed:
        click.echo("no backup sets")
    for item in listed:
        click.echo(f"{item['set']}  {len(item['databases'])} databases  {item['objects']} objects  "
                   f"kept as {', '.join(item['kept_as']) or '-'}")


@backup.command("check")
@click.option("--max-age", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Default: twice BACKUP_INTERVAL_SECONDS.")
@click.pass_obj
def backup_check(config, max_age):
    """Exit 1 unless the newest set is recent (the compose service's healthcheck)."""
    settings = _settings(config)
    limit = max_age or 2 * settings.interval_seconds
    age = jobs.newest_age_seconds(settings)
    if age is None:
        raise OpsError(f"no backup set in {settings.root}")
    if age > limit:
        raise OpsError(f"the newest backup set is {age / 3600:.1f} h old (limit {limit / 3600:.1f} h)")
    click.echo(f"the newest backup set is {age / 3600:.1f} h old")


@backup.command("restore")
@click.argument("set_name", required=False)
@click.option("--yes", is_flag=True, help="Really overwrite the configured databases and store.")
@click.option("--erasure-log-db", "erasure_log_urls", multiple=True, metavar="URL",
              help="A privacy database whose erasure log to honour too (the old live one).")
@click.pass_obj
def backup_restore(config, set_name, yes, erasure_log_urls):
    """Restore a set (the newest by default) into the databases and object store
    the services are configured with, then erase again every erased user."""
    if not yes:
        raise OpsError("not restoring without --yes (it replaces the databases' contents)",
                       exit_code=2)
    try:
        result = jobs.restore(_settings(config), set_name, list(erasure_log_urls), progress=_echo)
    except jobs.BackupError as exc:
        raise OpsError(str(exc)) from None
    click.echo(f"restored {result['set']}: {len(result['databases'])} databases, "
               f"{result['objects']} objects; {result['erased_again']} erased user(s) erased again")
