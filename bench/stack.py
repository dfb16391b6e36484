"""Start stack processes for a benchmark: a fresh RabbitMQ vhost, SQLite
databases in a temporary directory, processes from deploy/Procfile."""

from __future__ import annotations

import os
import tempfile
import urllib.parse
import uuid
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.conftest import Process, base_env, free_port

AMQP = os.environ.get("DARKROOM_BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
MGMT = os.environ.get("DARKROOM_BENCH_RABBIT_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672")


@contextmanager
def vhost():
    name = f"darkroom-bench-{uuid.uuid4().hex[:8]}"
    quoted = urllib.parse.quote(name, safe="")
    requests.put(f"{MGMT}/api/vhosts/{quoted}", timeout=10).raise_for_status()
    requests.put(f"{MGMT}/api/permissions/{quoted}/guest",
                 json={"configure": ".*", "write": ".*", "read": ".*"}, timeout=10).raise_for_status()
    try:
        yield AMQP.rstrip("/") + "/" + quoted
    finally:
        requests.delete(f"{MGMT}/api/vhosts/{quoted}", timeout=30)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_pids(by_name: dict) -> dict[str, int]:
    """The stack's processes by name (a gunicorn master's workers each by
    its own name): what the benchmarks account CPU and memory to."""
    pids = {name: proc.proc.pid for name, proc in by_name.items() if name != "gateway"}
    if "gateway" in by_name:
        pids.update({f"gateway worker {n}": pid
                     for n, pid in enumerate(children(by_name["gateway"].proc.pid), 1)})
    return pids


def broker_pid() -> int | None:
    """The local RabbitMQ's Erlang VM, when the broker runs on this machine
    (its CPU counts against every message the stack sends)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "beam.smp" \
                    and b"rabbit" in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except OSError:
            continue
    return None


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a gunicorn master's workers)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@contextmanager
def processes():
    """Yields start(name, **env) -> (Process, env); stops everything at the end.
    ``start.by_name`` holds the last process started under each name."""
    started: list[Process] = []
    with tempfile.TemporaryDirectory() as tmp, vhost() as amqp_uri:
        def start(name: str, **extra) -> tuple[Process, dict]:
            env = base_env(**{
                "AMQP_URI": amqp_uri,
                "AUTH_DATABASE_URL": f"sqlite:///{tmp}/auth.db",
                "NOTIFICATIONS_DATABASE_URL": f"sqlite:///{tmp}/notifications.db",
                "MAIL_URL": f"file://{tmp}/mail",
                "LOG_LEVEL": "WARNING",
                **extra,  # a benchmark's own settings win
            })
            proc = Process(name, env, Path(tmp)).start()
            started.append(proc)
            start.by_name[name] = proc
            return proc, env

        start.by_name = {}

        try:
            yield start, free_port
        finally:
            for proc in reversed(started):
                proc.stop()
