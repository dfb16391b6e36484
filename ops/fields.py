"""``darkroom-ops fields``: the personal fields encrypted in the databases
(services/common/fieldcrypt.py).

    darkroom-ops fields status [--service S]... [--json]
                                              per service: rows not yet under the
                                              newest key of FIELD_ENCRYPTION_KEYS
    darkroom-ops fields rekey [--service S]... [--batch-size N] [--json]
                                              re-encrypt them under it (resumable)

Every service whose models declare encrypted columns is handled, each with its
own config file (``deploy/config/<service>.yaml``: its ``DATABASE_URL`` and
keys), so it runs where the services' configuration is (compose: the
``backup`` service, which has the databases and the keys). The runbook:
docs/operations.md, "Encryption of personal fields".
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager

import click

from ops.errors import OpsError
from ops.output import output, progress
from services.common import fieldcrypt
from services.common.config import config_path, load_config
from services.common.contracts.privacy import PART_SERVICES
from services.common.engine import make_engine
from services.common.keyring import KeyRingError
from services.common.secrets import ConfigurationRefused, refuse_insecure_config


def encrypted_services() -> dict[str, object]:
    """Service → its models' metadata, for every service with encrypted columns."""
    found = {}
    for service in PART_SERVICES:
        metadata = importlib.import_module(f"services.{service}.models").Base.metadata
        if any(True for _ in fieldcrypt.encrypted_columns(metadata)):
            found[service] = metadata
    return found


def _open(service: str):
    """The service's engine, with its keys configured and checked against
    what its database holds (refused like the service: weak secrets in
    production, a ring that cannot read the stored fields)."""
    path = config_path(service)
    try:
        config = load_config(path)
        refuse_insecure_config(config, "darkroom-ops fields", path)
        fieldcrypt.configure(fieldcrypt.FieldKeys.from_config(config))
    except FileNotFoundError:
        raise OpsError(f"config file not found: {path}") from None
    except (ConfigurationRefused, KeyRingError) as exc:
        raise OpsError(str(exc)) from None
    return make_engine(str(config["DATABASE_URL"]))


@contextmanager
def _checked(service: str, metadata):
    """The service's engine, once its keys are known to read its database."""
    engine = _open(service)
    try:
        with engine.connect() as connection:
            fieldcrypt.check_readable(connection, metadata)
        yield engine
    except (KeyRingError, fieldcrypt.TamperedField) as exc:
        raise OpsError(f"{service}: {exc}") from None
    finally:
        engine.dispose()


def _stale(engine, metadata) -> int:
    with engine.connect() as connection:
        return fieldcrypt.count_stale(connection, metadata)


def status(services: dict) -> dict:
    result = {}
    for service, metadata in services.items():
        with _checked(service, metadata) as engine:
            result[service] = {"current_key": fieldcrypt.keys().ring.current_id,
                               "stale_rows": _stale(engine, metadata)}
    return result


def rekey(services: dict, batch_size: int) -> dict:
    result = {}
    for service, metadata in services.items():
        with _checked(service, metadata) as engine:
            with progress(label=f"{service}: re-encrypting", length=_stale(engine, metadata)) as bar:
                done = fieldcrypt.rekey(engine, metadata, batch_size, progress=bar.update)
            result[service] = {"current_key": fieldcrypt.keys().ring.current_id,
                               "rewritten_rows": done, "stale_rows": _stale(engine, metadata)}
    return result


def _status_lines(result: dict) -> list[str]:
    return [f"{service}: {row['stale_rows']} row(s) not under {row['current_key']}"
            for service, row in result.items()]


def _rekey_lines(result: dict) -> list[str]:
    lines = [f"{service}: re-encrypted {row['rewritten_rows']} row(s) under "
             f"{row['current_key']}, {row['stale_rows']} left"
             for service, row in result.items()]
    if result and not any(row["stale_rows"] for row in result.values()):
        lines.append("every personal field is under the newest key: older keys may now be "
                     f"removed from {fieldcrypt.ENV_VAR}")
    return lines


def _chosen(names: tuple[str, ...]) -> dict:
    services = encrypted_services()
    unknown = sorted(set(names) - set(services))
    if unknown:
        raise OpsError(f"no encrypted fields in: {', '.join(unknown)} "
                       f"(services with some: {', '.join(services)})", exit_code=2)
    return {s: m for s, m in services.items() if not names or s in names}


@click.group()
def fields():
    """Personal fields encrypted in the databases: key status and rotation."""


SERVICE_OPTION = click.option(
    "--service", "names", multiple=True, metavar="NAME",
    help="Only this service (repeatable; default: every one with encrypted fields).")


@fields.command("status")
@SERVICE_OPTION
@output(_status_lines)
def fields_status(names):
    """Rows, per service, not yet under the newest key of FIELD_ENCRYPTION_KEYS."""
    return status(_chosen(names))


@fields.command("rekey")
@SERVICE_OPTION
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10000),
              help="Rows re-encrypted per transaction.")
@output(_rekey_lines, failed=lambda result: any(row["stale_rows"] for row in result.values()))
def fields_rekey(names, batch_size):
    """Re-encrypt every personal field not under the newest key of
    FIELD_ENCRYPTION_KEYS. Each batch is committed: after an interruption, run
    it again. Exit 1 if rows are left (written meanwhile by a process with an
    older ring)."""
    return rekey(_chosen(names), batch_size)
