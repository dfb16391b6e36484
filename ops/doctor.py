"""``darkroom-ops doctor``: is this deployment able to run, and if not, what
to change.

It reads each process's config file the way the process does
(:func:`services.common.config.load_config` on ``deploy/config/<name>.yaml``,
or ``DARKROOM_CONFIG_DIR``) and builds each service's settings with the
service's own ``FromConfig`` factories (a value the service would refuse is
refused here, with the same message). Then it checks what the processes
connect to: RabbitMQ (every broker URL named) and its management API, each
service's database and whether its migrations are at head, the object
store, the mail server; and the secrets: the production check of
:mod:`services.common.secrets` (a failure with ``DARKROOM_ENV=production``,
a warning otherwise: the development defaults are fine on a laptop).

Each finding is ``{"group", "check", "status": ok|warn|fail, "detail",
"fix"}``; the exit code is 1 when any is ``fail``. Nothing is written: a
database that does not exist is not created, a migration is not run.
"""

from __future__ import annotations

import importlib
import smtplib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import make_url

from ops.config import load_ops_config
from ops.errors import OpsError
from ops.output import silent
from ops.rabbit import connect, safe_url
from services.common.config import config_path, load_config
from services.common.engine import make_engine
from services.common.migrations import SERVICES_DIR, alembic_config
from services.common.secrets import ENV_VAR, config_variables, insecure_settings, is_production
from services.common.service import FromConfig

SERVICES = ("auth", "billing", "generation", "notifications", "privacy", "storage")
PROCESSES = (*SERVICES, "gateway")
TIMEOUT_SECONDS = 5
# the FromConfig dependencies that are settings (others start pools and clients)
SETTINGS_ATTRIBUTES = ("settings", "sealer", "mail_settings")


@dataclass
class Finding:
    group: str
    check: str
    status: str  # ok, warn, fail
    detail: str = ""
    fix: str = ""


class Doctor:
    def __init__(self, only: Iterable[str] = ()):
        self.only = set(only)
        self.findings: list[Finding] = []

    def wanted(self, group: str) -> bool:
        return not self.only or group in self.only

    def add(self, group: str, check: str, status: str, detail: str = "", fix: str = "") -> None:
        self.findings.append(Finding(group, check, status, detail, fix))

    def probe(self, group: str, check: str, action: Callable[[], str | None],
              fix: Callable[[Exception], str]) -> bool:
        """Run ``action`` (its answer is the detail); an exception is a failure
        whose fix ``fix(exc)`` says."""
        try:
            detail = action() or ""
        except Exception as exc:  # every failure is a finding, never a traceback
            self.add(group, check, "fail", _first_line(exc), fix(exc))
            return False
        self.add(group, check, "ok", detail)
        return True


def _first_line(exc: Exception) -> str:
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}".rstrip(": ")


def _variable(path: Path, key: str, default: str) -> str:
    """The environment variable behind config ``key`` of ``path`` (else ``default``)."""
    return config_variables(path).get(key) or default


# ------------------------------------------------------------ the checks


def check_config(doc: Doctor, name: str) -> dict[str, Any] | None:
    path = config_path(name)
    try:
        config = load_config(path)
    except Exception as exc:
        doc.add(name, "config", "fail", f"cannot read {path}: {_first_line(exc)}",
                f"fix {path} (or point DARKROOM_CONFIG_DIR at the directory of the config files)")
        return None
    doc.add(name, "config", "ok", str(path))
    if name in SERVICES:
        service = _service_class(name)
        for attribute in SETTINGS_ATTRIBUTES:
            provider = getattr(service, attribute, None)
            if isinstance(provider, FromConfig):
                doc.probe(name, f"settings ({attribute})",
                          lambda provider=provider: provider.factory(config) and None,
                          lambda exc: f"the {name} service would refuse to start: set the value "
                                      f"in {path} or the environment variable it names")
    check_secrets(doc, name, config, path)
    return config


def _service_class(name: str):
    module = importlib.import_module(f"services.{name}.service")
    return getattr(module, f"{name.capitalize()}Service")


def check_secrets(doc: Doctor, name: str, config: dict, path: Path) -> None:
    problems = insecure_settings(config, path)
    if not problems:
        doc.add(name, "secrets", "ok", "no secret on a development default or placeholder")
    elif is_production():
        doc.add(name, "secrets", "fail", "; ".join(problems),
                "set each to a long random value (see deploy/.env.example); the process "
                f"refuses to start with {ENV_VAR}=production until then")
    else:
        doc.add(name, "secrets", "warn", "; ".join(problems),
                f"fine for development; before {ENV_VAR}=production set each to a long "
                "random value (see deploy/.env.example)")


def check_database(doc: Doctor, name: str, config: dict) -> None:
    path = config_path(name)
    url = str(config.get("DATABASE_URL") or "")
    variable = _variable(path, "DATABASE_URL", f"{name.upper()}_DATABASE_URL")
    shown = safe_url(url)
    if not url:
        doc.add(name, "database", "fail", "no DATABASE_URL", f"set {variable}")
        return
    try:
        parsed = make_url(url)
    except Exception as exc:
        doc.add(name, "database", "fail", f"{shown}: {_first_line(exc)}",
                f"set {variable} to a URL such as postgresql://user:password@host:5432/{name}")
        return
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
            and not Path(parsed.database).exists():
        doc.add(name, "database", "fail", f"{shown}: the file does not exist",
                f"start the {name} service once, or run `python -m services.common.migrations "
                f"{name}`, or set {variable}")
        return
    connect_args = {} if parsed.get_backend_name() == "sqlite" else {"timeout": TIMEOUT_SECONDS}
    engine = make_engine(url, connect_args=connect_args, pool_size=1) \
        if parsed.get_backend_name() != "sqlite" else make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:
        database = parsed.database or name
        doc.add(name, "database", "fail", f"{shown}: {_first_line(exc)}",
                f"check {variable}: is the server at {parsed.host or 'the host'} running and "
                f"reachable, the user and password right, and does the database exist "
                f"(`createdb -h {parsed.host or 'localhost'} -U {parsed.username or 'postgres'} "
                f"{database}`)?")
        return
    finally:
        engine.dispose()
    doc.add(name, "database", "ok", shown)
    heads = ScriptDirectory.from_config(alembic_config(SERVICES_DIR / name / "migrations", url)
                                        ).get_heads()
    if current in heads:
        doc.add(name, "migrations", "ok", f"at head ({current})")
    else:
        doc.add(name, "migrations", "fail", f"at {current or 'no revision'}, head is "
                                            f"{', '.join(heads)}",
                f"run `python -m services.common.migrations {name}` (`make migrate` migrates "
                "every service), or start the service with DB_MIGRATE_ON_START=true")


def check_broker(doc: Doctor, amqp_uri: str, named_by: str) -> None:
    def reach():
        with connect(amqp_uri):
            return safe_url(amqp_uri)

    doc.probe("rabbitmq", f"broker ({named_by})", reach,
              lambda exc: f"is RabbitMQ running and reachable? check AMQP_URI in {named_by}'s "
                          "config (user, password and vhost must exist)")


def check_management(doc: Doctor, url: str) -> None:
    def reach():
        response = requests.get(f"{url.rstrip('/')}/api/overview", timeout=TIMEOUT_SECONDS)
        if response.status_code in (401, 403):
            raise OpsError(f"credentials refused ({response.status_code})")
        response.raise_for_status()
        return f"{safe_url(url)}: RabbitMQ {response.json().get('rabbitmq_version', '?')}"

    doc.probe("rabbitmq", "management API", reach,
              lambda exc: "enable the management plugin (`rabbitmq-plugins enable "
                          "rabbitmq_management`) and check RABBIT_MANAGEMENT_URL (its user needs "
                          "the management or monitoring tag)")


def check_object_store(doc: Doctor, config: dict) -> None:
    from services.storage.backends import make_backend

    def reach():
        backend = make_backend(config)
        client, bucket = getattr(backend, "client", None), getattr(backend, "bucket", None)
        if client is not None and bucket is not None:  # S3
            if not client.bucket_exists(bucket):
                raise OpsError(f"no bucket {bucket!r}")
            return f"s3: bucket {bucket} exists"
        root = Path(str((config.get("STORAGE") or {}).get("FS_ROOT") or "var/objects"))
        if not root.is_dir():
            raise OpsError(f"{root} is not a directory")
        return f"fs: {root}"

    doc.probe("storage", "object store", reach,
              lambda exc: "check STORAGE_BACKEND, and S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY "
                          "and S3_BUCKET (the storage service creates the bucket when it "
                          "starts), or STORAGE_FS_ROOT for the fs backend (`mkdir -p` it)")


def check_mail(doc: Doctor, config: dict) -> None:
    from services.notifications.mailer import SmtpSettings, parse_mail_url

    def reach():
        target = parse_mail_url(str((config.get("MAIL") or {}).get("URL") or ""))
        if not isinstance(target, SmtpSettings):
            if not target.is_dir() and not target.parent.is_dir():
                raise OpsError(f"neither {target} nor its parent is a directory")
            return f"file: {target}"
        smtp_class = smtplib.SMTP_SSL if target.implicit_tls else smtplib.SMTP
        with smtp_class(target.host, target.port, timeout=TIMEOUT_SECONDS) as smtp:
            smtp.noop()
        return f"smtp: {target.host}:{target.port} answers"

    doc.probe("notifications", "mail server", reach,
              lambda exc: "check MAIL_URL (smtp://user:password@host:587?starttls=true, "
                          "smtps://..., or file://var/mail): is the server up and reachable?")


# ------------------------------------------------------------ the run


def run(ops_config_file: str | None = None, only: Iterable[str] = (),
        progress: Callable[[str, int], Any] = silent) -> dict:
    """Every check (or the ``only`` groups'); ``progress(label, steps)``: a
    bar moved once the ops config, each process and the brokers are checked
    (each check may wait up to TIMEOUT_SECONDS for what is down)."""
    doc = Doctor(only)
    brokers: dict[str, str] = {}
    with progress("checking", len(PROCESSES) + 2) as bar:
        if doc.wanted("ops") or doc.wanted("rabbitmq"):
            try:
                ops_config = load_ops_config(ops_config_file)
            except OpsError as exc:
                doc.add("ops", "config", "fail", exc.message,
                        "fix the file, or give another with --config / DARKROOM_OPS_CONFIG")
            else:
                doc.add("ops", "config", "ok")
                brokers.setdefault(ops_config["AMQP_URI"], "ops")
                if doc.wanted("rabbitmq"):
                    check_management(doc, ops_config["RABBIT_MANAGEMENT_URL"])
        bar.update(1)
        for name in PROCESSES:
            _check_process(doc, name, brokers)
            bar.update(1)
        if doc.wanted("rabbitmq"):
            for amqp_uri, named_by in brokers.items():
                check_broker(doc, amqp_uri, named_by)
        bar.update(1)
    findings = [asdict(f) for f in doc.findings]
    return {"ok": not any(f["status"] == "fail" for f in findings),
            "production": is_production(), "findings": findings}


def _check_process(doc: Doctor, name: str, brokers: dict[str, str]) -> None:
    """One process's config and what it connects to; its broker noted in ``brokers``."""
    if not (doc.wanted(name) or (doc.wanted("rabbitmq") and name in SERVICES)):
        return
    config = check_config(doc, name) if doc.wanted(name) else _quiet_config(name)
    if config is None:
        return
    if name in SERVICES and config.get("AMQP_URI"):
        brokers.setdefault(str(config["AMQP_URI"]), name)
    if not doc.wanted(name):
        return
    if name in SERVICES:
        check_database(doc, name, config)
    if name == "storage":
        check_object_store(doc, config)
    if name == "notifications":
        check_mail(doc, config)


def _quiet_config(name: str) -> dict | None:
    try:
        return load_config(config_path(name))
    except Exception:
        return None


def failed(result: dict) -> bool:
    return not result["ok"]


def lines(result: dict) -> list[str]:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    out = []
    for f in result["findings"]:
        out.append(f"{marks[f['status']]}  {f['group']}: {f['check']}"
                   + (f" — {f['detail']}" if f["detail"] else ""))
        if f["status"] != "ok" and f["fix"]:
            out.append(f"      fix: {f['fix']}")
    fails = sum(f["status"] == "fail" for f in result["findings"])
    warns = sum(f["status"] == "warn" for f in result["findings"])
    out.append("")
    out.append("all checks passed" + (f" ({warns} warning{'s' if warns != 1 else ''})"
                                      if warns else "") if not fails
               else f"{fails} problem{'s' if fails != 1 else ''} found"
               + (f", {warns} warning{'s' if warns != 1 else ''}" if warns else ""))
    return out
