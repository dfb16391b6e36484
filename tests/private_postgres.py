"""A private PostgreSQL server for tests that stop and restart it.

The shared server (tests/conftest.py ``postgres_server``) is used by every
other test and by other runs on the machine: never restart it. This one is
made by ``initdb`` in a temporary directory, listens on a free loopback port
with trust authentication, and is removed when stopped for good.

As root, PostgreSQL refuses to run: the directory is given to the
``postgres`` OS user and every server command runs as that user
(``runuser -u postgres --``). ``DARKROOM_TEST_PG_BINDIR`` names the directory
of ``initdb``/``pg_ctl`` when it is not the newest ``/usr/lib/postgresql/*/bin``
(the ``postgresql`` package, which deploy/local-services.sh installs for the
shared server, brings them).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import free_port


def pg_bindir() -> Path | None:
    configured = os.environ.get("DARKROOM_TEST_PG_BINDIR")
    if configured:
        return Path(configured)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class PrivatePostgres:
    """``start()``, ``restart()`` (fast shutdown, then start), ``stop()``,
    ``url(database)``, ``create_database(name)``; ``destroy()`` stops it
    and removes its directory."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="darkroom-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        result = subprocess.run([*self.as_user, str(self.bindir / tool), *args],
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}\n{self.server_log()[-3000:]}")

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def _ctl(self, action: str, *extra: str) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=200")
        self._run("pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", "60", "-o", options, *extra)

    def start(self) -> PrivatePostgres:
        self._ctl("start")
        return self

    def stop(self) -> None:
        """A fast shutdown: open sessions are ended, as in a real restart."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def running(self) -> bool:
        result = subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "status", "-D",
                                 str(self.data)], capture_output=True, timeout=30)
        return result.returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        from sqlalchemy import create_engine, text

        from services.common.db import normalise_url

        engine = create_engine(normalise_url(self.url()), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def destroy(self) -> None:
        try:
            if self.running():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
