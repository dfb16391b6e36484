"""Three local RabbitMQ nodes clustered on this machine, for the cluster tests.

Each node is Debian's (or any unix) ``rabbitmq-server`` started directly from
RabbitMQ's own ``sbin`` (``/usr/lib/rabbitmq/bin`` on Debian: the
``/usr/sbin`` wrapper re-runs it as the ``rabbitmq`` user when root, dropping
the environment), with, all under one temporary directory:

- its own node name (``dr<N>-<run>@localhost``) and ``rabbitmq.conf`` with
  its own AMQP port on 127.0.0.1 (free ports);
- its own distribution port (``RABBITMQ_DIST_PORT``, a free port, never the
  system node's 25672), the distribution bound to 127.0.0.1;
- its own data (``RABBITMQ_MNESIA_BASE``) and log (``RABBITMQ_LOG_BASE``)
  directories, no plugins (the management plugin stays off: the harness asks
  the nodes with ``rabbitmqctl``), and an empty ``rabbitmq-env.conf`` (the
  system's names the system node);
- a ``HOME`` holding the shared Erlang cookie (``.erlang.cookie``, mode 600),
  which ``rabbitmqctl`` reads too.

Node 1 starts alone; nodes 2 and 3 start beside it, then ``stop_app``,
``join_cluster``, ``start_app``. It runs as root (CI does) and as any other
user. :meth:`RabbitCluster.close` stops every node it started (SIGTERM, then
SIGKILL to the process groups it started, never anything else) and deletes
the directory, whatever happened before.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import RUN_ID, free_port, wait_for

# RabbitMQ's own scripts: Debian's package keeps them here
DEFAULT_SBIN = ("/usr/lib/rabbitmq/bin", "/usr/lib/rabbitmq/sbin")
START_TIMEOUT = 180  # a loaded 2-core machine boots a node in 10-60 s


def find_sbin() -> Path | None:
    """The directory of ``rabbitmq-server`` and ``rabbitmqctl`` that run as the
    caller: ``DARKROOM_TEST_RABBITMQ_SBIN``, Debian's, or the one on PATH
    (unless it is Debian's ``/usr/sbin`` wrapper)."""
    configured = os.environ.get("DARKROOM_TEST_RABBITMQ_SBIN")
    candidates = [configured] if configured else list(DEFAULT_SBIN)
    found = shutil.which("rabbitmq-server")
    if not configured and found and not found.startswith("/usr/sbin/"):
        candidates.append(str(Path(found).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "rabbitmq-server").exists():
            return Path(candidate)
    return None


class Node:
    def __init__(self, cluster: RabbitCluster, index: int):
        self.cluster = cluster
        self.index = index
        self.name = f"dr{index}-{RUN_ID}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.dir = cluster.root / f"node{index}"
        self.proc: subprocess.Popen | None = None
        for sub in ("data", "log"):
            (self.dir / sub).mkdir(parents=True)
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            # what RabbitMQ recommends for three nodes: a minority side pauses
            "cluster_partition_handling = pause_minority\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")

    @property
    def uri(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(self.cluster.home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "data"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        })
        return env

    def start(self) -> Node:
        assert not self.alive(), f"{self.name} runs already"
        log = open(self.dir / "server.out", "ab")
        self.proc = subprocess.Popen([str(self.cluster.sbin / "rabbitmq-server")], env=self.env(),
                                     cwd=self.dir, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def await_startup(self, timeout: float = START_TIMEOUT) -> Node:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.logs()}")
            left = deadline - time.monotonic()
            result = self.ctl("await_startup", "--timeout", str(max(5, int(min(left, 60)))),
                              check=False, timeout=max(10, min(left, 60) + 30))
            if result.returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not start: {result.stderr}\n{self.logs()}")
            time.sleep(1)

    def kill(self) -> None:
        """The node lost: SIGKILL to its process group (the VM, no goodbye)."""
        self._signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 30) -> None:
        if not self.alive():
            return
        self._signal(signal.SIGTERM)  # the Erlang VM shuts down cleanly on SIGTERM
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(10)

    def _signal(self, sig) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def ctl(self, *args: str, tool: str = "rabbitmqctl", check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([str(self.cluster.sbin / tool), "-n", self.name, *args],
                                env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} -n {self.name} {' '.join(args)} failed "
                               f"({result.returncode}): {result.stderr or result.stdout}")
        return result

    def logs(self, tail: int = 4000) -> str:
        parts = []
        for path in [self.dir / "server.out", *sorted((self.dir / "log").glob("*.log"))]:
            if path.exists():
                parts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-tail:])
        return "\n".join(parts)


class RabbitCluster:
    """``RabbitCluster(sbin).start()``: three clustered nodes; ``close()`` always."""

    def __init__(self, sbin: Path, size: int = 3):
        self.sbin = sbin
        self.root = Path(tempfile.mkdtemp(prefix=f"darkroom-cluster-{RUN_ID}-"))
        self.home = self.root / "home"
        self.home.mkdir()
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o600)
        self.nodes = [Node(self, i) for i in range(1, size + 1)]

    def start(self) -> RabbitCluster:
        try:
            for node in self.nodes:  # all boot at once; then they join the first
                node.start()
            for node in self.nodes:
                node.await_startup()
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.name)
                node.ctl("start_app")
            self.wait_running(len(self.nodes))
        except BaseException:
            self.close()
            raise
        return self

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def uri(self, order: list[int] | None = None) -> str:
        """``AMQP_URI`` naming every node, ``;``-separated (kombu's failover),
        in ``order`` (indexes into :attr:`nodes`)."""
        order = order if order is not None else list(range(len(self.nodes)))
        return ";".join(self.nodes[i].uri for i in order)

    def ask(self) -> Node:
        """A running node to ask about the cluster."""
        return next(n for n in self.nodes if n.alive())

    def cluster_status(self) -> dict:
        out = self.ask().ctl("cluster_status", "--formatter", "json", tool="rabbitmq-diagnostics",
                             timeout=60).stdout
        return json.loads(out)

    def running_nodes(self) -> list[str]:
        return sorted(self.cluster_status().get("running_nodes", []))

    def wait_running(self, count: int, timeout: float = START_TIMEOUT) -> list[str]:
        return wait_for(lambda: len(nodes := self.running_nodes()) == count and nodes, timeout,
                        1, f"{count} running nodes in the cluster")

    def queues(self) -> list[dict]:
        """Every queue of the default vhost: name, type, leader, members, online,
        messages, consumers."""
        out = self.ask().ctl("list_queues", "name", "type", "leader", "members", "online",
                             "messages", "consumers", "--formatter", "json", "-q",
                             timeout=60).stdout
        return json.loads(out or "[]")

    def connections(self) -> list[dict]:
        """Every client connection to the cluster: its channels, and the node it
        is on (by the node's AMQP port, each node's own here)."""
        out = self.ask().ctl("list_connections", "port", "peer_port", "channels",
                             "--formatter", "json", "-q", timeout=60).stdout
        rows = json.loads(out or "[]")
        by_port = {n.port: n.name for n in self.nodes}
        for row in rows:
            row["node"] = by_port.get(row["port"])
        return rows

    def leader_of_most(self) -> Node:
        """The node that leads the most quorum queues."""
        counts: dict[str, int] = {}
        for queue in self.queues():
            if queue.get("type") == "quorum" and queue.get("leader"):
                counts[queue["leader"]] = counts.get(queue["leader"], 0) + 1
        assert counts, "no quorum queue has a leader"
        return self.node(max(counts, key=counts.get))

    def logs(self) -> str:
        return "\n".join(f"=== {n.name}\n{n.logs()}" for n in self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except Exception:
                if node.proc is not None:
                    node._signal(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
