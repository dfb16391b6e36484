"""Hot reads answered from the gateway's memory: the read cache.

``GET /v1/me`` (the profile and the policy status), ``GET /v1/billing/balance``
and ``GET /v1/generations/{id}`` of a job that has ended are kept per process
(one gunicorn worker), keyed by user (and job), filled by the first read and
answered from memory afterwards. What keeps them true (docs/scaling.md "The
read path", docs/architecture.md):

- **A bound.** An entry lives at most the credential cache's time
  (``GATEWAY_AUTH_CACHE_SECONDS``, 15 s by default, at most 30), so nothing
  is served longer than a revoked credential is; a job's entry no longer than
  its earliest signed output URL is valid.
- **Events.** Each worker runs one consumer (:class:`EventListener`, a
  daemon thread) on an exclusive, auto-delete queue bound to every service's
  events exchange; any event naming a user (``user_id``) drops that user's
  entries in this process, and an event that changes everyone's reads
  (:data:`EVERYONE`: a new privacy policy version) empties it. While the consumer is not connected nothing is
  served from memory (every read is an RPC, as without the cache), and when
  it (re)connects the cache is emptied: an event missed while away cannot
  leave a stale entry.
- **Own writes, at once.** The write goes through one worker and the owner's
  next read may land on another before that worker's consumer has the event.
  So any request but GET/HEAD/OPTIONS by an authenticated user (and
  ``verify-email``, for the user it verified) bumps the user's *write stamp*
  when it ends, before the answer leaves; every read takes the stamps before
  its RPC and an entry is served only while they are unchanged. The stamps
  are shared by the host's workers through shared memory
  (:class:`HostStamps`, made by gunicorn's master before it forks, in
  deploy/config/gunicorn.conf.py), or by every replica through Redis when the
  rate limits use Redis (:class:`RedisStamps`, ``RATELIMIT_STORAGE_URI``).
  A stamp that cannot be read means no cache for that read.

Since a read takes the stamps *before* its RPC and a write bumps them *after*
its RPC returned (the service committed, and published its events, before
replying), an entry filled by a read that may have seen the state before a
write never outlives the write's answer.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import os
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge

log = logging.getLogger("gateway.readcache")

READS = Counter("darkroom_gateway_read_cache_reads_total",
                "Reads through the gateway's read cache: hit (from memory), miss (an RPC, "
                "then kept when it may be), bypass (no consumer or no stamps: an RPC)",
                ["kind", "result"])
ENTRIES = Gauge("darkroom_gateway_read_cache_entries",
                "Entries held by a gateway process's read cache", multiprocess_mode="liveall")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EVENT_SOURCES = ("auth", "billing", "generation", "privacy", "storage")
SLOTS = 4096  # stamp slots: users share a slot by hash (a shared slot only costs a miss)
REDIS_STAMP_SECONDS = 3600  # far longer than any entry lives
RECONNECT_SECONDS = 1.0
HEARTBEAT_SECONDS = 10


def _slot(user_id: str) -> int:
    return zlib.crc32(str(user_id).encode()) % SLOTS


class HostStamps:
    """Write stamps shared by one host's gunicorn workers: a shared-memory
    array of counters, one slot per hash of a user id and one for everyone,
    made before the fork."""

    def __init__(self, slots: int = SLOTS):
        self._array = multiprocessing.Array("Q", slots + 1)  # with a process-shared lock
        self._everyone = slots

    def read(self, user_id: str) -> tuple[int, int]:
        with self._array.get_lock():
            return self._array[_slot(user_id)], self._array[self._everyone]

    def bump(self, user_id: str | None) -> None:
        """``None``: everyone (a write the gateway cannot tie to a user)."""
        with self._array.get_lock():
            self._array[self._everyone if user_id is None else _slot(user_id)] += 1


_host_stamps: HostStamps | None = None
_host_lock = threading.Lock()


def host_stamps() -> HostStamps:
    """This host's stamps: made once, in gunicorn's master by the gunicorn
    config (before it forks the workers, which then share them)."""
    global _host_stamps
    with _host_lock:
        if _host_stamps is None:
            _host_stamps = HostStamps()
        return _host_stamps


class RedisStamps:
    """Write stamps in Redis, shared by every gateway replica."""

    PREFIX = "darkroom:readcache:stamp:"
    EVERYONE = PREFIX + "*"

    def __init__(self, url: str, client=None):
        if client is None:
            import redis

            client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.client = client

    def read(self, user_id: str) -> tuple[int, int]:
        mine, everyone = self.client.mget([self.PREFIX + str(user_id), self.EVERYONE])
        return int(mine or 0), int(everyone or 0)

    def bump(self, user_id: str | None) -> None:
        key = self.EVERYONE if user_id is None else self.PREFIX + str(user_id)
        with self.client.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, REDIS_STAMP_SECONDS)
            pipe.execute()


def stamps_from_config(config: dict):
    uri = str(config.get("RATELIMIT_STORAGE_URI") or "")
    if uri.startswith(("redis://", "rediss://", "unix://")):
        return RedisStamps(uri)
    return host_stamps()


class _Entry:
    __slots__ = ("value", "expires", "stamp", "local", "epoch")

    def __init__(self, value, expires, stamp, local, epoch):
        self.value, self.expires, self.stamp, self.local, self.epoch = (
            value, expires, stamp, local, epoch)


class ReadCache:
    """The per-process cache. ``fetch(kind, user_id, key, load, lifetime)``
    answers from memory when it may, else calls ``load()`` (the RPC) and keeps
    its result for ``lifetime(result)`` seconds (None: not kept), never longer
    than ``ttl``. Values are shared between threads: never mutate them."""

    def __init__(self, ttl: float, stamps, listener=None, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 20_000):
        self.ttl = max(0.0, float(ttl))
        self.stamps = stamps
        self.listener = listener
        self.clock = clock
        self.max_entries = max_entries
        self._entries: dict[tuple, _Entry] = {}
        self._local = [0] * SLOTS  # bumped by events, in this process only
        self._epoch = 0  # bumped when the whole cache is dropped
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    # -------------------------------------------------------------- state

    def live(self) -> bool:
        """Whether memory may answer: a bound above zero and a connected consumer."""
        if self.ttl <= 0 or self.listener is None:
            return False
        return self.listener.ensure_running()

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()
            if self.ttl > 0:
                ENTRIES.set(0)

    def invalidate(self, user_id: str) -> None:
        """An event about ``user_id`` (this process only): its slot's counter
        moves on, so the user's entries (and those of users sharing the slot)
        are no longer served; they go when next read or pruned (no scan of
        the whole cache per event)."""
        slot = _slot(user_id)
        with self._lock:
            self._local[slot] += 1

    def wrote(self, user_id: str | None) -> None:
        """``user_id`` changed something (``None``: someone the gateway cannot
        name): every worker sharing the stamps stops answering that user's
        (everyone's) reads from the entries it holds."""
        if self.ttl <= 0:
            return
        try:
            self.stamps.bump(None if user_id is None else str(user_id))
        except Exception:  # noqa: BLE001 - the services' events and the bound remain
            log.warning("cannot bump the read cache's write stamp", exc_info=True)
        if user_id is None:
            self.clear()
        else:
            self.invalidate(user_id)

    # -------------------------------------------------------------- reads

    def fetch(self, kind: str, user_id: str, key: str | None, load: Callable[[], Any],
              lifetime: Callable[[Any], float | None] | None = None,
              render: Callable[[Any], Any] = lambda value: value) -> Any:
        """``render(load())``, from memory when this process has it and it is
        still true. ``lifetime`` is asked of the loaded value; the entry keeps
        the rendered one (a hit skips the rendering too)."""
        if not self.live():
            READS.labels(kind, "bypass").inc()
            return render(load())
        user_id = str(user_id)
        try:
            stamp = self.stamps.read(user_id)
        except Exception:  # noqa: BLE001 - no stamp, no cache: ask the service
            log.warning("cannot read the read cache's write stamp", exc_info=True)
            READS.labels(kind, "bypass").inc()
            return render(load())
        entry_key = (kind, user_id, key)
        slot = _slot(user_id)
        now = self.clock()
        with self._lock:
            local, epoch = self._local[slot], self._epoch
            entry = self._entries.get(entry_key)
            if entry is not None:
                if (entry.stamp == stamp and entry.local == local and entry.epoch == epoch
                        and now < entry.expires):
                    self.hits += 1
                    READS.labels(kind, "hit").inc()
                    return entry.value
                del self._entries[entry_key]
            self.misses += 1
        READS.labels(kind, "miss").inc()
        loaded = load()
        seconds = self.ttl if lifetime is None else lifetime(loaded)
        value = render(loaded)
        if seconds is None or seconds <= 0:
            return value
        expires = now + min(self.ttl, float(seconds))  # counted from before the RPC
        with self._lock:
            # an event or a reconnection while the RPC ran: the value may predate it
            if self._local[slot] == local and self._epoch == epoch and self.live_unlocked():
                if len(self._entries) >= self.max_entries:
                    self._prune(now)
                self._entries[entry_key] = _Entry(value, expires, stamp, local, epoch)
                ENTRIES.set(len(self._entries))
        return value

    def live_unlocked(self) -> bool:
        return self.listener is not None and self.listener.connected

    def _prune(self, now: float) -> None:
        self._entries = {k: e for k, e in self._entries.items() if e.expires > now}
        while len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))

    def __len__(self) -> int:
        return len(self._entries)


def users_in(body: Any) -> list[str]:
    """The users an event is about (``user_id``; a batch's ``user_ids``)."""
    if not isinstance(body, dict):
        return []
    users = []
    for name in ("user_id", "owner_id"):
        if isinstance(body.get(name), str):
            users.append(body[name])
    for name in ("user_ids", "owner_ids"):
        if isinstance(body.get(name), list):
            users += [u for u in body[name] if isinstance(u, str)]
    return users


# events that change every user's cached reads, (exchange, routing key): the
# whole cache goes (a new policy version changes everyone's /v1/me)
EVERYONE = {("privacy.events", "policy_published")}


class EventListener:
    """One consumer per process on an exclusive, auto-delete queue bound to
    every service's events exchange (every routing key): each event naming a
    user invalidates that user's entries. ``connected`` only while consuming;
    the cache is emptied each time it connects. Started on first use in each
    process (gunicorn forks its workers after the app is built)."""

    def __init__(self, amqp_uri: str, sources=EVENT_SOURCES):
        self.amqp_uri = amqp_uri
        self.sources = tuple(sources)
        self.cache: ReadCache | None = None
        self.connected = False
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self.connections = 0  # how many times it connected (tests, logs)

    def ensure_running(self) -> bool:
        if self._pid != os.getpid():
            with self._start_lock:
                if self._pid != os.getpid():
                    self.connected = False  # a forked copy: the parent's consumer is not ours
                    self._stop = threading.Event()
                    self._thread = threading.Thread(target=self._run, name="readcache-events",
                                                    daemon=True)
                    self._pid = os.getpid()
                    self._thread.start()
        return self.connected

    def stop(self) -> None:
        self._stop.set()

    def _queue(self):
        from kombu import Queue, binding
        from nameko.standalone.events import get_event_exchange

        name = f"gateway-readcache-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return Queue(name, bindings=[binding(get_event_exchange(source, {}), routing_key="#")
                                     for source in self.sources],
                     exclusive=True, auto_delete=True, durable=False)

    def _run(self) -> None:
        from kombu import Connection

        failures = 0
        while not self._stop.is_set():
            try:
                with Connection(self.amqp_uri, heartbeat=HEARTBEAT_SECONDS,
                                connect_timeout=5) as conn:
                    conn.ensure_connection(max_retries=1)
                    queue = self._queue()
                    with conn.Consumer([queue], callbacks=[self._on_message], no_ack=True,
                                       accept=["json"]):
                        if self.cache is not None:
                            self.cache.clear()  # whatever was missed while away
                        self.connected = True
                        self.connections += 1
                        failures = 0
                        log.info("read cache consuming events on %s", queue.name)
                        while not self._stop.is_set():
                            try:
                                conn.drain_events(timeout=1)
                            except TimeoutError:
                                conn.heartbeat_check()
            except Exception as exc:  # noqa: BLE001 - any failure: serve nothing, reconnect
                failures += 1
                if self.connected or failures in (1, 10) or failures % 60 == 0:
                    log.warning("read cache event consumer: %s (every read asks the services "
                                "until it is back)", exc, exc_info=failures == 1)
            finally:
                self.connected = False
                if self.cache is not None:
                    self.cache.clear()
            self._stop.wait(RECONNECT_SECONDS)

    def _on_message(self, body, message) -> None:
        if self.cache is None:
            return
        info = getattr(message, "delivery_info", None) or {}
        if (info.get("exchange"), info.get("routing_key")) in EVERYONE:
            self.cache.clear()
            return
        for user_id in users_in(body):
            self.cache.invalidate(user_id)


def from_config(config: dict, enabled: bool = True) -> ReadCache:
    """The gateway's read cache: ``READ_CACHE_ENABLED`` (on by default) and
    the credential cache's bound (``AUTH_CACHE_SECONDS``, at most 30)."""
    from gateway.auth import MAX_CACHE_SECONDS

    ttl = min(float(config.get("AUTH_CACHE_SECONDS") or 0), MAX_CACHE_SECONDS)
    on = enabled and str(config.get("READ_CACHE_ENABLED", True)).strip().lower() in (
        "1", "true", "yes", "on")
    if not on or ttl <= 0:
        return ReadCache(0, None)
    listener = EventListener(str(config["AMQP_URI"]))
    cache = ReadCache(ttl, stamps_from_config(config), listener=listener)
    listener.cache = cache
    return cache


# ------------------------------------------------------------------ the gateway's side


def job_lifetime(job: Any) -> float | None:
    """How long a job's view may be kept: only once it has ended (a running
    job changes every moment), and never past its earliest signed output URL."""
    from services.common.contracts.generation import FINAL

    if not isinstance(job, dict) or job.get("status") not in FINAL:
        return None
    expiries = [u.get("url_expires_at") for u in job.get("output_urls") or []]
    if not expiries:
        return float("inf")
    try:
        earliest = min(dt.datetime.fromisoformat(str(e).replace("Z", "+00:00")) for e in expiries)
    except (TypeError, ValueError):
        return None
    return (earliest - dt.datetime.now(dt.UTC)).total_seconds()


def cached(kind: str, user_id: str, key: str | None, load: Callable[[], Any],
           lifetime: Callable[[Any], float | None] | None = None,
           render: Callable[[Any], Any] = lambda value: value) -> Any:
    """The request's read through this process's cache (:meth:`ReadCache.fetch`)."""
    from flask import current_app

    return current_app.extensions["darkroom"].read_cache.fetch(kind, user_id, key, load,
                                                               lifetime, render)


# Requests without a credential that change nothing a read cache holds (any
# other write without one, a payment provider's webhook say, bumps everyone's stamp).
CHANGE_NO_READS = frozenset({
    "/v1/auth/register", "/v1/auth/login", "/v1/auth/resend-verification",
    "/v1/auth/password-reset", "/v1/auth/password-reset/confirm",  # credentials only
    "/v1/auth/passkey/options", "/v1/auth/passkey/login",
})


def wrote(user_id: str) -> None:
    """A write for ``user_id`` made without their credential (verify-email)."""
    from flask import current_app, g

    current_app.extensions["darkroom"].read_cache.wrote(user_id)
    g.read_cache_stamped = True


def init_app(app) -> None:
    """Any request but GET/HEAD/OPTIONS by an authenticated caller bumps their
    write stamp when it ends: after its RPC returned, before the answer is sent
    (Flask runs teardown before the server writes the response). One without
    a credential bumps everyone's, unless it was refused (4xx), its view
    stamped the user it wrote for, or it is one of :data:`CHANGE_NO_READS`."""
    from flask import current_app, g, request

    @app.after_request
    def note_status(response):
        g.read_cache_status = response.status_code
        return response

    @app.teardown_request
    def stamp_write(exc=None):
        cache: ReadCache = current_app.extensions["darkroom"].read_cache
        if request.method in SAFE_METHODS or cache.ttl <= 0:
            return
        principal = g.get("principal")
        if principal is not None:
            cache.wrote(principal.user_id)
        elif not g.get("read_cache_stamped") and request.url_rule is not None \
                and request.url_rule.rule not in CHANGE_NO_READS \
                and not 400 <= g.get("read_cache_status", 500) < 500:  # refused: nothing changed
            cache.wrote(None)
