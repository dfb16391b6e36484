"""Name lookups off the eventlet hub, without eventlet's green DNS.

By default eventlet answers ``socket.getaddrinfo`` and its kin with its green
resolver (eventlet.support.greendns), which loads dnspython twice (a plain
copy and a monkey-patched one): about 7 MB resident in every service, a
fifteenth of the 100 MB each may use (docs/scaling.md). With
``EVENTLET_NO_GREENDNS=yes`` in the environment (deploy/Dockerfile,
``make dev``, the tests' processes) eventlet leaves the C library's lookups in
place, and those block: a slow DNS server would stall every green thread of
the process, RPC replies and heartbeats included, for as long as a lookup
takes. :func:`install` sends them to eventlet's native thread pool (as
``offload`` does with password hashes): the calling green thread waits, the
others run. The C library's lookups also read ``/etc/hosts`` and follow
``nsswitch.conf``, as any other process on the host does.

With green DNS on (the variable unset) nothing changes.
"""

from __future__ import annotations

import functools
import logging

from nameko.extensions import DependencyProvider

log = logging.getLogger(__name__)

LOOKUPS = ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "getnameinfo")


def install() -> list[str]:
    """Send the blocking lookups of a monkey-patched process to the thread
    pool; the names replaced (none when green DNS answers them, or when the
    process is not monkey-patched)."""
    from eventlet import patcher

    if not patcher.is_monkey_patched("socket"):
        return []
    import socket

    from eventlet import tpool
    from eventlet.green import socket as green_socket

    replaced, pooled = [], {}
    for name in LOOKUPS:
        # eventlet's create_connection calls the green module's own name
        for module in (socket, green_socket):
            lookup = getattr(module, name)
            # the C library's (socket.py's wrapper or _socket's), not greendns's
            if lookup.__module__ in ("socket", "_socket") and not hasattr(lookup, "blocking"):
                if lookup not in pooled:
                    pooled[lookup] = _pooled(lookup, tpool)
                setattr(module, name, pooled[lookup])
                replaced.append(name)
    return sorted(set(replaced))


def _pooled(lookup, tpool):
    @functools.wraps(lookup)
    def pooled(*args, **kwargs):
        return tpool.execute(lookup, *args, **kwargs)

    pooled.blocking = lookup
    return pooled


class NameLookups(DependencyProvider):
    """Calls :func:`install` as the service's container is set up, before any
    entrypoint connects anywhere."""

    def setup(self) -> None:
        replaced = install()
        log.debug("name lookups in the thread pool: %s", ", ".join(replaced) or "none")
