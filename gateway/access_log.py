"""Access-log facts for the privacy service, published in batches
(``gateway.requests_logged``) without slowing any request down.

The response hook only puts a small dict on a bounded in-process queue
(``put_nowait``: it never blocks, never touches the network); a daemon thread
per process takes one fact off it (waiting for it), then whatever else comes
within :data:`BATCH_WAIT_SECONDS` (half a second), up to :data:`BATCH_MAX`,
and publishes them as one event, persistent and confirmed, to the
``gateway.events`` exchange (nameko's event exchange for a service named
``gateway``, where the privacy service's handler listens). A fact reaches the privacy service within about half a second;
under load an event carries many facts (one message and one privacy
transaction for them all), under a burst up to :data:`BATCH_MAX`.
When the queue is full (the broker is away, or slower than the traffic), the
fact is dropped and counted in ``darkroom_access_log_dropped_total``; the facts
of an event that cannot be published after a few tries are dropped and counted
too (facts, not events). Access logs are a record, not a ledger: losing some
under an outage is accepted, blocking the API is not.

What a fact holds (and nothing else): its own id (a uuid4 made with the fact:
the privacy service's row id, so a redelivered event stores each fact once),
the user id when the request was authenticated, the method, the route
template (``/v1/images/<uuid:image_id>``, never the path with its ids, never a
query string), the status, the time, and the client's network truncated to
/24 (IPv4) or /48 (IPv6). The event carries the request id as its correlation
id only when all its facts come from one request (a batch of one).

Health checks and metrics scrapes (``/healthz``, ``/readyz``, ``/metrics``)
are not users' requests and are not published (a compose healthcheck alone
would add a row every ten seconds, forever).

The thread starts on first use in each process (gunicorn forks its workers
after the app may have been built) and again after a fork.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

from nameko.amqp.publish import Publisher
from nameko.standalone.events import get_event_exchange
from prometheus_client import Counter

from services.common.contracts import make_event
from services.common.contracts import privacy as _privacy_contracts
from services.common.ids import isoformat, new_id, utcnow
from services.common.networks import network_of

log = logging.getLogger("gateway.access_log")

EVENT = "gateway.requests_logged"
ROUTING_KEY = "requests_logged"
BATCH_MAX = _privacy_contracts.ACCESS_LOG_BATCH_MAX  # 500 facts per event at most
BATCH_WAIT_SECONDS = 0.5  # how long the first fact of an event waits for others
DEFAULT_QUEUE_SIZE = 10_000
PUBLISH_TRIES = 3
NOT_LOGGED = frozenset({"/healthz", "/readyz", "/metrics"})
RETRY_PAUSE_SECONDS = 1.0

DROPPED = Counter("darkroom_access_log_dropped_total",
                  "Access-log facts not published (queue full, the broker refused them, "
                  "or they did not fit their contract)",
                  ["reason"])


def fact(method: str, route: str, status: int, user_id: str | None, address: str | None) -> dict:
    # time-ordered (UUIDv7): a batch's rows go to the end of privacy's primary
    # key index, not to random pages of it (its commits wrote a page per row)
    return {"id": str(new_id()), "user_id": user_id, "method": method[:10],
            "route": route[:200], "status": int(status), "network": network_of(address),
            "at": isoformat(utcnow())}


class AccessLogPublisher:
    def __init__(self, amqp_uri: str, max_queue: int = DEFAULT_QUEUE_SIZE, publisher=None,
                 batch_wait: float = BATCH_WAIT_SECONDS):
        self.amqp_uri = amqp_uri
        self.batch_wait = batch_wait
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, int(max_queue)))
        self._publisher = publisher
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self.published = 0

    # -- the request side: never blocks

    def submit(self, payload: dict, correlation_id: str | None = None) -> bool:
        if payload["route"] in NOT_LOGGED:
            return False
        self._ensure_thread()
        try:
            self.queue.put_nowait((payload, correlation_id))
        except queue.Full:
            DROPPED.labels("queue_full").inc()
            return False
        return True

    def _ensure_thread(self) -> None:
        pid = os.getpid()
        if self._thread is not None and self._pid == pid and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._pid == pid and self._thread.is_alive():
                return
            if self._pid != pid:  # a forked child: the parent's queue and thread are not ours
                self.queue = queue.Queue(maxsize=self.queue.maxsize)
            self._pid = pid
            self._thread = threading.Thread(target=self._run, name="access-log-publisher",
                                            daemon=True)
            self._thread.start()

    # -- the publishing thread

    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(self.amqp_uri, use_confirms=True, serializer="json",
                                        declare=[get_event_exchange("gateway", {})])
        return self._publisher

    def _run(self) -> None:
        while True:
            self._send(self.take())

    def _send(self, batch: list[tuple[dict, str | None]]) -> None:
        correlation_ids = {correlation_id for _, correlation_id in batch}
        try:
            self.publish([payload for payload, _ in batch],
                         correlation_ids.pop() if len(correlation_ids) == 1 else None)
        except Exception:  # a fact that does not fit its contract: a bug, not a reason to stop
            if len(batch) > 1:  # the others still go out
                for item in batch:
                    self._send([item])
                return
            log.exception("an access log fact does not fit its contract; dropped")
            DROPPED.labels("invalid").inc()

    def take(self) -> list[tuple[dict, str | None]]:
        """One fact (waiting for it), then those that come within
        ``batch_wait`` seconds, up to BATCH_MAX."""
        batch = [self.queue.get()]
        deadline = time.monotonic() + self.batch_wait
        while len(batch) < BATCH_MAX:
            try:
                batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def publish(self, facts: list[dict], correlation_id: str | None = None) -> bool:
        """Publish ``facts`` (1 to BATCH_MAX) as one event, trying a few times;
        False (and the facts counted as dropped) when the broker refused it."""
        body = make_event(EVENT, {"entries": facts})
        headers = {"nameko.correlation_id": correlation_id} if correlation_id else {}
        for attempt in range(1, PUBLISH_TRIES + 1):
            try:
                self.publisher().publish(body, exchange=get_event_exchange("gateway", {}),
                                         routing_key=ROUTING_KEY, extra_headers=headers)
                self.published += len(facts)
                return True
            except Exception as exc:  # the broker is away: wait a little, then give up
                log.warning("%d access log fact(s) not published (try %d of %d): %s",
                            len(facts), attempt, PUBLISH_TRIES, exc)
                if attempt < PUBLISH_TRIES:
                    time.sleep(RETRY_PAUSE_SECONDS * attempt)
        DROPPED.labels("publish_failed").inc(len(facts))
        return False


def from_config(config: dict) -> AccessLogPublisher | None:
    """The publisher the app's config asks for (``ACCESS_LOG_EVENTS``, default
    on; ``ACCESS_LOG_QUEUE_SIZE``, default 10000), or None."""
    enabled = config.get("ACCESS_LOG_EVENTS", True)
    if isinstance(enabled, str):
        enabled = enabled.strip().lower() in ("1", "true", "yes", "on")
    if not enabled:
        return None
    return AccessLogPublisher(str(config["AMQP_URI"]),
                              int(config.get("ACCESS_LOG_QUEUE_SIZE") or DEFAULT_QUEUE_SIZE))
