"""Shared test infrastructure: real RabbitMQ and PostgreSQL, services as processes.

Endpoints, in order of preference:
1. environment variables: ``DARKROOM_TEST_AMQP_URI`` (+ ``DARKROOM_TEST_RABBIT_MANAGEMENT_URL``)
   and ``DARKROOM_TEST_POSTGRES_URL`` (a URL of a database the tests may use to
   create and drop databases);
2. testcontainers, when a Docker engine is reachable;
3. the local servers on their standard ports.

Each run gets a fresh RabbitMQ vhost and fresh PostgreSQL databases, removed at
the end. With ``CI=true`` an unreachable service fails the run; elsewhere the
tests that need it are skipped with the reason.
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
PROCFILE = REPO / "deploy" / "Procfile"
RUN_ID = uuid.uuid4().hex[:8]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str, why: str):
    message = f"{what} is not reachable: {why}"
    if IN_CI:
        pytest.fail(message + " (CI=true: a missing service fails the run)", pytrace=False)
    pytest.skip(message)


def docker_reachable() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last error
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}" + (f": {last!r}" if last else ""))


# ---------------------------------------------------------------- RabbitMQ


@pytest.fixture(scope="session")
def rabbit_server():
    """(amqp base URI without vhost, management URL with credentials)."""
    amqp = os.environ.get("DARKROOM_TEST_AMQP_URI")
    mgmt = os.environ.get("DARKROOM_TEST_RABBIT_MANAGEMENT_URL")
    container = None
    if not amqp and docker_reachable():
        from testcontainers.rabbitmq import RabbitMqContainer

        container = RabbitMqContainer("rabbitmq:3.13-management").with_exposed_ports(5672, 15672)
        container.start()
        host = container.get_container_host_ip()
        amqp = f"amqp://guest:guest@{host}:{container.get_exposed_port(5672)}/"
        mgmt = f"http://guest:guest@{host}:{container.get_exposed_port(15672)}"
    amqp = amqp or "amqp://guest:guest@127.0.0.1:5672/"
    if not mgmt:
        parsed = urllib.parse.urlsplit(amqp)
        mgmt = f"http://{parsed.username or 'guest'}:{parsed.password or 'guest'}@{parsed.hostname}:15672"
    try:
        requests.get(f"{mgmt}/api/overview", timeout=5).raise_for_status()
    except Exception as exc:
        unavailable("RabbitMQ (with its management plugin)", repr(exc))
    yield amqp.rstrip("/") + "/", mgmt
    if container is not None:
        container.stop()


@pytest.fixture(scope="session")
def rabbit_vhost(make_vhost):
    """The run's shared fresh vhost: (amqp URI, vhost name)."""
    return make_vhost("run")


@pytest.fixture(scope="session")
def amqp_uri(rabbit_vhost) -> str:
    return rabbit_vhost[0]


@pytest.fixture(scope="session")
def make_vhost(rabbit_server):
    """``make_vhost("ops")`` → (amqp URI, vhost name) of another fresh vhost, for tests
    whose queues must not be shared with processes other modules left running."""
    amqp, mgmt = rabbit_server
    user = urllib.parse.urlsplit(amqp).username or "guest"
    created = []

    def make(label: str) -> tuple[str, str]:
        vhost = f"darkroom-test-{RUN_ID}-{label}-{len(created)}"
        quoted = urllib.parse.quote(vhost, safe="")
        requests.put(f"{mgmt}/api/vhosts/{quoted}", timeout=10).raise_for_status()
        created.append(quoted)
        requests.put(f"{mgmt}/api/permissions/{quoted}/{user}",
                     json={"configure": ".*", "write": ".*", "read": ".*"}, timeout=10).raise_for_status()
        return amqp + quoted, vhost

    yield make
    for quoted in created:
        requests.delete(f"{mgmt}/api/vhosts/{quoted}", timeout=30)


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server():
    url = os.environ.get("DARKROOM_TEST_POSTGRES_URL")
    container = None
    if not url and docker_reachable():
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16", driver=None)
        container.start()
        url = container.get_connection_url()
    url = url or "postgresql://postgres@127.0.0.1:5432/postgres"
    from sqlalchemy import create_engine, text

    from services.common.db import normalise_url

    try:
        engine = create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        unavailable("PostgreSQL", repr(exc))
    yield url, engine
    engine.dispose()
    if container is not None:
        container.stop()


@pytest.fixture(scope="session")
def make_database(postgres_server):
    """``make_database("auth")`` → URL of a fresh database, dropped at the end."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    base_url, engine = postgres_server
    created = []

    def make(name: str) -> str:
        db = f"dr_{RUN_ID}_{name}_{len(created)}"
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{db}"'))
        created.append(db)
        return make_url(base_url).set(database=db).render_as_string(hide_password=False)

    yield make
    with engine.connect() as conn:
        for db in created:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def make_migrated_engine(make_database):
    """``make_migrated_engine("billing", pool_size=14)`` → an engine on a fresh
    database with that service's migrations applied (for tests that run
    domain code from many threads at once), disposed after the module."""
    from services.common.db import make_engine
    from services.common.migrations import SERVICES_DIR, upgrade

    engines = []

    def make(service: str, pool_size: int = 10):
        url = make_database(f"{service}_concurrency")
        upgrade(SERVICES_DIR / service / "migrations", url)
        engines.append(make_engine(url, pool_size=pool_size))
        return engines[-1]

    yield make
    for engine in engines:
        engine.dispose()


# ---------------------------------------------------------------- processes


def procfile_commands() -> dict[str, str]:
    """The process commands `make dev` runs (and compose mirrors)."""
    commands = {}
    for line in PROCFILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, command = line.partition(":")
            commands[name.strip()] = command.strip()
    return commands


class Process:
    """A stack process started from its Procfile command, logs kept in a file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, command: str | None = None):
        self.name = name
        self.command = command or procfile_commands()[name]
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self):
        argv = shlex.split(self.command)
        bindir = Path(sys.executable).parent
        if (bindir / argv[0]).exists():
            argv[0] = str(bindir / argv[0])
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout: float = 15):
        if not self.alive():
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def kill(self):
        self.stop(signal.SIGKILL)

    def wait_ready(self, url: str, timeout: float = 60):
        def ready():
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.logs()[-4000:]}")
            return requests.get(url, timeout=2).status_code == 200

        try:
            wait_for(ready, timeout, 0.2, f"{self.name} at {url}")
        except TimeoutError:
            raise TimeoutError(f"{self.name} not ready at {url}:\n{self.logs()[-4000:]}") from None
        return self


@pytest.fixture(scope="session")
def process_log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("process-logs")


def base_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()}
    env.update({
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
        "EVENT_RETRY_DELAYS_MS": "[200, 400]",
        "AUTH_SECRET_KEY": "test-secret",
        "HSTS_ENABLED": "true",
        "EVENTLET_NO_GREENDNS": "yes",  # as deploy/Dockerfile and the Makefile set it
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def providers_file(directory, providers: dict, routes: dict | None = None, **sections) -> str:
    """Writes a providers file (docs/providers.md) into ``directory`` and returns its
    path, for ``GENERATION_PROVIDERS_FILE``. The fakes run on loopback, so every
    network provider gets ``allow_private_network: true``."""
    providers = {name: ({**conf, "allow_private_network": True} if conf.get("base_url")
                        else dict(conf)) for name, conf in providers.items()}
    data = {"providers": providers, **({"routes": routes} if routes is not None else {}),
            **sections}
    path = Path(directory) / "providers.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def processes(log_dir: Path):
    """A ``start(name, env, command=None)`` → running :class:`Process`, and
    what stops every process it started."""
    started: list[Process] = []

    def start(name: str, env: dict[str, str], command: str | None = None) -> Process:
        """``command`` runs something that is not in the Procfile (a test-only service)."""
        proc = Process(name, env, log_dir, command).start()
        started.append(proc)
        return proc

    def stop_all() -> None:
        for proc in reversed(started):
            proc.stop()

    return start, stop_all


@pytest.fixture(scope="session")
def start_process(process_log_dir):
    """``start_process("auth", env)`` → a running :class:`Process`, stopped at the
    end of the session (the end-to-end stack; tests/integration's own
    ``start_process`` stops each module's processes when the module ends)."""
    start, stop_all = processes(process_log_dir)
    yield start
    stop_all()


# ---------------------------------------------------------------- S3 (object storage)

_bucket_numbers = itertools.count()


@dataclass(frozen=True)
class S3Endpoint:
    """An S3-compatible store for the tests: ``endpoint`` is ``host:port``."""

    endpoint: str
    access_key: str
    secret_key: str
    secure: bool = False
    region: str = "us-east-1"
    kind: str = "moto"  # "env" (DARKROOM_TEST_S3_ENDPOINT), "minio" (testcontainer) or "moto"

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    @property
    def enforces_presigned_expiry(self) -> bool:
        """moto accepts presigned URLs after their expiry; MinIO and S3 refuse them."""
        return self.kind != "moto"

    def bucket_name(self, label: str = "test") -> str:
        """A fresh valid bucket name, unique in the run (one per test module, say)."""
        label = re.sub(r"[^a-z0-9-]+", "-", label.lower()).strip("-")[:30].strip("-") or "test"
        return f"dr-{RUN_ID}-{label}-{next(_bucket_numbers)}"


@pytest.fixture(scope="session")
def s3_endpoint():
    """``DARKROOM_TEST_S3_ENDPOINT`` (+ ``_ACCESS_KEY``/``_SECRET_KEY``, ``host:port`` or a
    URL) when set: a real store (MinIO, S3) unless ``DARKROOM_TEST_S3_KIND=moto`` says it is
    a moto server; a MinIO testcontainer when a Docker engine is reachable; otherwise an
    in-process moto server on a free port. Never skipped for want of a store."""
    configured = os.environ.get("DARKROOM_TEST_S3_ENDPOINT")
    if configured:
        parsed = urllib.parse.urlsplit(configured if "://" in configured else f"http://{configured}")
        endpoint = S3Endpoint(
            parsed.netloc,
            os.environ.get("DARKROOM_TEST_S3_ACCESS_KEY", "minioadmin"),
            os.environ.get("DARKROOM_TEST_S3_SECRET_KEY", "minioadmin"),
            secure=parsed.scheme == "https",
            region=os.environ.get("DARKROOM_TEST_S3_REGION", "us-east-1"),
            kind=os.environ.get("DARKROOM_TEST_S3_KIND", "env"),
        )
        try:
            requests.get(endpoint.url, timeout=5)
        except Exception as exc:
            unavailable(f"S3 at {endpoint.url}", repr(exc))
        yield endpoint
        return
    if docker_reachable():
        from testcontainers.community.minio import MinioContainer

        # MinIO refuses server-side encryption (which the s3 backend requires) without a KMS key
        container = MinioContainer().with_env(
            "MINIO_KMS_SECRET_KEY", "darkroom-test:" + base64.b64encode(os.urandom(32)).decode())
        container.start()
        try:
            yield S3Endpoint(
                f"{container.get_container_host_ip()}:{container.get_exposed_port(container.port)}",
                container.access_key, container.secret_key, kind="minio",
            )
        finally:
            container.stop()
        return
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Endpoint(f"{host}:{port}", "darkroom-test", "darkroom-test-secret", kind="moto")
    finally:
        server.stop()
