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

import logging
import time

import click

from ops.backups import jobs
from ops.errors import OpsError
from ops.output import bar, emit, output, wants_json
from ops.storage import human_bytes
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


@click.group()
def backup():
    """Backups: every service's database and the object store, encrypted."""


def _run_lines(manifest: dict) -> list[str]:
    objects = manifest["objects"]
    return [f"backup set {manifest['name']}: {len(manifest['databases'])} databases, "
            f"{objects['count']} objects ({human_bytes(objects['bytes'])}; "
            f"{objects.get('unchanged', 0)} unchanged since the last set); "
            f"{len(manifest['kept'])} kept, {len(manifest['deleted'])} rotated out"]


@backup.command("run")
@click.option("--repeat", is_flag=True,
              help="Keep running: a set every BACKUP_INTERVAL_SECONDS (the compose service).")
@output(_run_lines)
@click.pass_obj
def backup_run(config, repeat):
    """Take a backup set now, then rotate the old ones."""
    settings = _settings(config)
    while True:
        started = time.monotonic()
        try:
            manifest = jobs.run(settings, progress=bar)
            if not repeat:
                return manifest
            emit(manifest, wants_json(), _run_lines)
        except jobs.BackupError as exc:
            if not repeat:
                raise OpsError(str(exc)) from None
            click.echo(f"error: backup failed: {exc}", err=True)
        except Exception:  # a database or store down: try again at the next interval
            if not repeat:
                raise
            log.exception("backup failed")
            click.echo("error: backup failed (see the traceback above)", err=True)
        time.sleep(max(0.0, settings.interval_seconds - (time.monotonic() - started)))


def _verify_lines(result: dict) -> list[str]:
    lines = [f"{service}: restorable ({summary})"
             for service, summary in result["databases"].items()]
    lines.append(f"objects: {result['objects']} verified")
    lines += [f"PROBLEM: {problem}" for problem in result["problems"]]
    if result["problems"]:
        lines.append(f"backup set {result['set']} has {len(result['problems'])} problem(s)")
    else:
        lines.append(f"backup set {result['set']} is complete and restorable")
    return lines


@backup.command("verify")
@click.argument("set_name", required=False)
@output(_verify_lines, failed=lambda result: bool(result["problems"]))
@click.pass_obj
def backup_verify(config, set_name):
    """Check a set (the newest by default): every database, every object.
    Exit 1 when it has a problem."""
    try:
        return jobs.verify(_settings(config), set_name, progress=bar)
    except jobs.BackupError as exc:
        raise OpsError(str(exc)) from None


def _list_lines(listed: list[dict]) -> list[str]:
    if not listed:
        return ["no backup sets"]
    return [f"{item['set']}  {len(item['databases'])} databases  {item['objects']} objects  "
            f"kept as {', '.join(item['kept_as']) or '-'}" for item in listed]


@backup.command("list")
@output(_list_lines)
@click.pass_obj
def backup_list(config):
    """The backup sets, oldest first, and which rotation keeps each."""
    return jobs.list_sets(_settings(config))


@backup.command("check")
@click.option("--max-age", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Default: twice BACKUP_INTERVAL_SECONDS.")
@output(lambda result: [f"the newest backup set is {result['age_hours']:.1f} h old"])
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
    return {"age_hours": age / 3600, "limit_hours": limit / 3600}


@backup.command("restore")
@click.argument("set_name", required=False)
@click.option("--yes", is_flag=True, help="Really overwrite the configured databases and store.")
@click.option("--erasure-log-db", "erasure_log_urls", multiple=True, metavar="URL",
              help="A privacy database whose erasure log to honour too (the old live one).")
@output(lambda result: [
    f"restored {result['set']}: {len(result['databases'])} databases, "
    f"{result['objects']} objects; {result['erased_again']} erased user(s) erased again "
    f"(the erasure log knows {result['erasure_log']})"])
@click.pass_obj
def backup_restore(config, set_name, yes, erasure_log_urls):
    """Restore a set (the newest by default) into the databases and object store
    the services are configured with, then erase again every erased user."""
    if not yes:
        raise OpsError("not restoring without --yes (it replaces the databases' contents)",
                       exit_code=2)
    try:
        return jobs.restore(_settings(config), set_name, list(erasure_log_urls), progress=bar)
    except jobs.BackupError as exc:
        raise OpsError(str(exc)) from None
