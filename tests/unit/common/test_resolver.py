"""services/common/resolver.py: without eventlet's green DNS, a name lookup
runs in the thread pool and the rest of the process goes on meanwhile.

Each case runs a fresh interpreter, monkey-patched as ``nameko run`` does
(monkey-patching is for the whole process and cannot be undone in this one)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, base_env

# A DNS server that takes half a second: the C library's lookup holds its
# thread that long. Meanwhile a green thread ticks every 10 ms.
SLOW_LOOKUP = """
import json, socket, sys, time
import eventlet
eventlet.monkey_patch()
import _socket
from eventlet import patcher
from services.common.resolver import install

real, pause = _socket.getaddrinfo, patcher.original("time").sleep
def slow(*args):
    pause(0.5)
    return real(*args)
_socket.getaddrinfo = slow  # socket.getaddrinfo calls it

replaced = install() if sys.argv[1] == "install" else []
ticks = []
def tick():
    while True:
        ticks.append(time.monotonic())
        eventlet.sleep(0.01)
eventlet.spawn(tick)
eventlet.sleep(0)
started = time.monotonic()
infos = socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
took = time.monotonic() - started
print(json.dumps({"replaced": replaced, "took": took,
                  "ticks": len([t for t in ticks if t > started]),
                  "addresses": sorted({info[4][0] for info in infos}),
                  "dnspython": "dns" in sys.modules}))
"""


def run(code: str, *args: str, green_dns: bool = False) -> dict:
    env = base_env()
    if green_dns:
        env.pop("EVENTLET_NO_GREENDNS", None)
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code, *args], cwd=REPO, env=env,
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out.splitlines()[-1])


def test_a_slow_lookup_leaves_the_other_green_threads_running():
    result = run(SLOW_LOOKUP, "install")
    assert result["replaced"] == ["getaddrinfo", "gethostbyname", "gethostbyname_ex", "getnameinfo"]
    assert result["took"] >= 0.5
    assert result["ticks"] >= 20, result  # ~50 in half a second
    assert "127.0.0.1" in result["addresses"] or "::1" in result["addresses"]
    assert result["dnspython"] is False  # eventlet's green DNS not loaded


def test_without_it_the_lookup_stops_the_whole_process():
    # what install() is for: the C library's lookup holds the hub
    result = run(SLOW_LOOKUP, "none")
    assert result["took"] >= 0.5
    assert result["ticks"] <= 1, result


def test_with_green_dns_on_nothing_is_replaced():
    result = run(SLOW_LOOKUP, "install", green_dns=True)
    assert result["replaced"] == []
    assert result["dnspython"] is True  # eventlet's green resolver answers


CONNECT = """
import json, socket, sys
import eventlet
eventlet.monkey_patch()
from services.common.resolver import install
install()
server = socket.socket()
server.bind(("127.0.0.1", 0)); server.listen(1)
port = server.getsockname()[1]
client = socket.create_connection(("localhost", port), timeout=5)  # eventlet's, by name
accepted, _ = server.accept()
print(json.dumps({"peer": accepted.getpeername()[0],
                  "pooled": hasattr(socket.getaddrinfo, "blocking")}))
"""


def test_a_connection_by_name_resolves_through_the_pool():
    result = run(CONNECT)
    assert result == {"peer": "127.0.0.1", "pooled": True}


@pytest.mark.parametrize("service", ["auth", "generation", "privacy"])
def test_a_service_started_as_deployed_loads_no_dnspython(service):
    code = ("import json, sys, eventlet; eventlet.monkey_patch(); "
            f"import services.{service}.service; print(json.dumps({{'dnspython': 'dns' in sys.modules}}))")
    assert run(code) == {"dnspython": False}
