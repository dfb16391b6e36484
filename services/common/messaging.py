"""Events that are validated, enveloped, retried with backoff and dead-lettered.

Publishing: :class:`EventPublisher` (``dispatch = EventPublisher(outbox=...)``)
dumps the payload through its contract schema, wraps it in the envelope
(``event_id``, ``occurred_at``, ``version``), writes it to the service's
transactional outbox and, once the worker's transaction commits, publishes it
persistent and confirmed to the service's events exchange, with the worker's
context (correlation id) as headers.

Consuming: :func:`event_handler` is nameko's ``event_handler`` made reliable.
nameko acks a message after its worker even when the worker raised; here, a
failed message is instead

1. republished to a delay queue ``darkroom.retry.<ms>`` (TTL, then dead-lettered
   by RabbitMQ back to the handler's own queue through the default exchange),
   once per configured delay (``EVENT_RETRY_DELAYS_MS``, default 1 s, 10 s, 60 s);
   a failure on a database outage (services/common/db.py ``is_outage``) is
   retried at the last delay for as long as the outage lasts, never given up;
2. after the last attempt, or at once for a payload that fails its schema (or
   cannot even be decoded) or a :class:`~services.common.errors.NonRetryable`
   error, published to the dead letter queue ``dlq.<queue>`` with the error
   recorded in ``x-darkroom-*`` headers, for ``darkroom-ops dlq``;

and only then acked. If that publish fails the message is requeued, so nothing
is acked and dropped. Consumers stay idempotent on ``event_id``
(:func:`services.common.db.claim_event`).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

from kombu import Exchange, Queue
from marshmallow import ValidationError
from nameko.amqp.publish import Publisher as AmqpPublisher
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.containers import ContainerBeingKilled
from nameko.events import SERVICE_POOL, EventDispatcher, EventHandler
from nameko.messaging import QueueConsumer
from sqlalchemy import event as sa_event

from services.common import contracts, outbox, queues
from services.common.db import is_outage
from services.common.errors import NonRetryable
from services.common.ids import isoformat, utcnow
from services.common.observability import EVENTS_DEAD_LETTERED, EVENTS_RETRIED
from services.common.queues import DEAD_LETTER_EXCHANGE, DLQ_PREFIX, RETRY_PREFIX

log = logging.getLogger(__name__)

DEFAULT_RETRY_DELAYS_MS = [1000, 10000, 60000]

HEADER_PREFIX = "x-darkroom-"
ATTEMPT_HEADER = "x-darkroom-attempt"
REPLAYS_HEADER = "x-darkroom-replays"
ERROR_HEADER = "x-darkroom-error"
TRACEBACK_HEADER = "x-darkroom-traceback"
ORIGINAL_QUEUE_HEADER = "x-darkroom-original-queue"

# What domain modules are given to publish an event: ``dispatch(event_type,
# payload)``, a service's ``EventPublisher`` (its return value, the event id, is
# not for domain code to rely on).
Dispatch = Callable[[str, dict], Any]


def dlq_name(queue_name: str) -> str:
    return DLQ_PREFIX + queue_name


def dead_letter_exchange() -> Exchange:
    return Exchange(DEAD_LETTER_EXCHANGE, type="direct", durable=True)


def retry_exchange(delay_ms: int) -> Exchange:
    return Exchange(f"{RETRY_PREFIX}{delay_ms}ms", type="fanout", durable=True)


def retry_queue(delay_ms: int, config: dict | None = None) -> Queue:
    """Messages wait here ``delay_ms``, then RabbitMQ dead-letters them to the
    default exchange under their original routing key: the failed queue.
    Classic or quorum as ``config`` says (:mod:`services.common.queues`)."""
    name = f"{RETRY_PREFIX}{int(delay_ms)}ms"
    return Queue(name, exchange=retry_exchange(delay_ms), durable=True,
                 queue_arguments=queues.queue_arguments(name, config or {}))


def dead_letter_queue(queue_name: str, config: dict | None = None) -> Queue:
    name = dlq_name(queue_name)
    return Queue(name, exchange=dead_letter_exchange(), routing_key=queue_name, durable=True,
                 queue_arguments=queues.queue_arguments(name, config or {}) or None)


def republish_headers(headers: dict | None) -> dict:
    """Headers to keep when a message is published again: nameko's context and
    our replay count, never RabbitMQ's ``x-death`` or our per-attempt records."""
    kept = {k: v for k, v in (headers or {}).items() if not k.startswith("x-")}
    if headers and REPLAYS_HEADER in headers:
        kept[REPLAYS_HEADER] = headers[REPLAYS_HEADER]
    return kept


class EventPublisher(EventDispatcher):
    """``self.dispatch("user_registered", {...})`` → ``auth.user_registered``,
    through the service's transactional outbox (:mod:`services.common.outbox`).

    ``dispatch`` validates and envelopes the event and writes it to ``outbox``
    in the worker's database transaction; it returns the ``event_id``. Dispatch
    *before* ``self.db.commit()``: the event is published after that commit
    (inside ``commit()``, so an RPC that returns has its events out), never if
    the transaction rolls back. The entrypoints named in ``after_reply``
    (generation's ``submit``) publish theirs right after the RPC's reply
    instead (nameko's ``worker_result``), so the caller does not wait for the
    broker's confirm; their rows are committed before the reply all the same,
    and the relay publishes them if the process dies in between. Published
    rows are deleted in batches by a sweeper (every
    ``SWEEP_INTERVAL_SECONDS``: one statement for all of them, rather than a
    transaction per event). Rows left behind (broker down,
    process killed) are published by a relay every
    ``OUTBOX_RELAY_INTERVAL_SECONDS`` (default 5); a process killed between a
    publish and the sweep publishes those events again from the relay, and
    consumers are idempotent. Context headers (the correlation id) are read
    when the event is dispatched.
    """

    SWEEP_INTERVAL_SECONDS = 0.5

    def __init__(self, outbox, after_reply: tuple[str, ...] = (), **kwargs):
        super().__init__(**kwargs)
        self.outbox = outbox
        self.after_reply = frozenset(after_reply)
        self.deferred: dict = {}  # worker context -> rows committed, published after the reply
        self.relay_thread = None
        self.published: set[str] = set()  # published, not yet deleted

    def setup(self):
        super().setup()
        from services.common.db import Database

        databases = [d for d in self.container.dependencies if isinstance(d, Database)]
        if len(databases) != 1:
            raise RuntimeError("EventPublisher needs the service to have exactly one Database")
        self.database = databases[0]
        self.relay_interval = float(self.container.config.get("OUTBOX_RELAY_INTERVAL_SECONDS", 5))

    def start(self):
        self.relay_thread = self.container.spawn_managed_thread(
            self._relay_forever, identifier="outbox-relay"
        )

    def stop(self):
        try:  # a graceful stop leaves nothing for the next start to publish again
            self.sweep()
        except Exception:
            log.exception("outbox sweep at stop failed; the relay will publish those again")
        if self.relay_thread is not None:
            self.relay_thread.kill()
            self.relay_thread = None

    kill = stop

    def get_dependency(self, worker_ctx):
        service = self.container.service_name
        pending: list[outbox.OutboxRow] = []
        listening = []
        entrypoint = getattr(worker_ctx, "entrypoint", None)
        after_reply = getattr(entrypoint, "method_name", None) in self.after_reply

        def on_commit(session):
            if session.in_nested_transaction():  # a savepoint released: not committed yet
                return
            rows = pending[:]
            pending.clear()
            if after_reply:
                self.deferred.setdefault(worker_ctx, []).extend(rows)
            else:
                self._flush(rows)

        def on_rollback(session):
            pending.clear()

        def dispatch(event_type: str, data: dict) -> str:
            body = contracts.make_event(f"{service}.{event_type}", data)
            session = self.database.sessions[worker_ctx]
            if not listening:
                sa_event.listen(session, "after_commit", on_commit)
                sa_event.listen(session, "after_rollback", on_rollback)
                listening.append(session)
            row = outbox.OutboxRow(
                body["event_id"], event_type, body, self.get_message_headers(worker_ctx)
            )
            outbox.enqueue(session, self.outbox, row)
            pending.append(row)
            return body["event_id"]

        return dispatch

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        """After the RPC's reply (nameko sends it before this hook)."""
        self._flush(self.deferred.pop(worker_ctx, []))

    def worker_teardown(self, worker_ctx):
        self._flush(self.deferred.pop(worker_ctx, []))

    def _flush(self, rows: list[outbox.OutboxRow]) -> None:
        """Right after the commit that wrote them: publish, and leave the rows
        to the sweeper. Never raises (the commit has happened); what is left
        unpublished is the relay's."""
        if not rows:
            return
        try:
            self.published.update(self._send(rows))
        except Exception:
            log.exception("outbox flush failed; the relay will publish what is left")

    def sweep(self) -> int:
        """Delete the rows published since the last sweep, in one statement."""
        done = list(self.published)
        if done:
            with self.database.engine.begin() as conn:
                outbox.remove(conn, self.outbox, done)
            self.published.difference_update(done)
        return len(done)

    def relay(self) -> int:
        """Publish the rows left for longer than one relay interval; returns how many."""
        self.sweep()
        with self.database.engine.begin() as conn:
            rows = outbox.due(conn, self.outbox, timedelta(seconds=self.relay_interval))
            rows = [row for row in rows if row.event_id not in self.published]
            published = self._send(rows)
            outbox.remove(conn, self.outbox, published)
        if published:
            log.warning("outbox relay published %d event(s) left behind", len(published))
        return len(published)

    def _send(self, rows: list[outbox.OutboxRow]) -> list[str]:
        """Publish rows in order until one fails; the ids of those published."""
        published = []
        for row in rows:
            try:
                self.publisher.publish(
                    row.body, exchange=self.exchange, routing_key=row.routing_key,
                    extra_headers=row.headers,
                )
            except Exception:
                log.exception("publishing %s failed; the outbox relay will retry", row.event_id)
                break
            published.append(row.event_id)
        return published

    def _relay_forever(self):
        last_relay = time.monotonic()
        while True:
            time.sleep(min(self.SWEEP_INTERVAL_SECONDS, self.relay_interval))  # green
            try:
                if time.monotonic() - last_relay >= self.relay_interval:
                    last_relay = time.monotonic()
                    self.relay()
                else:
                    self.sweep()
            except Exception:
                log.exception("outbox relay failed; retrying in %s s", self.relay_interval)


class ReliableQueueConsumer(QueueConsumer):
    """nameko's queue consumer, except for messages it cannot decode (a content
    type it does not accept, malformed JSON): kombu would log and ack them,
    dropping them; these go to the handler's dead-letter queue instead."""

    def get_consumers(self, consumer_cls, channel):
        consumers = super().get_consumers(consumer_cls, channel)
        for provider, consumer in self._consumers.items():
            consumer.on_decode_error = partial(self._on_decode_error, provider)
        return consumers

    def _on_decode_error(self, provider, message, exc):
        self.container.spawn_managed_thread(
            partial(provider.handle_undecodable, message, exc),
            identifier=f"{type(provider).__name__}.handle_undecodable",
        )


class ReliableEventHandler(EventHandler):
    """nameko's event handler with contract loading, retries and dead letters."""

    queue_consumer = ReliableQueueConsumer()

    def setup(self):
        super().setup()
        config = self.container.config
        self.retry_delays = [
            int(d) for d in config.get("EVENT_RETRY_DELAYS_MS", DEFAULT_RETRY_DELAYS_MS)
        ]
        self.event_name = f"{self.source_service}.{self.event_type}"
        self.amqp_uri = config[AMQP_URI_CONFIG_KEY]
        self.publisher = AmqpPublisher(self.amqp_uri, use_confirms=True, mandatory=True)
        durable = [dead_letter_queue(self.queue.name, config)]
        exchanges = [dead_letter_exchange()]
        for delay in self.retry_delays:
            exchanges.append(retry_exchange(delay))
            durable.append(retry_queue(delay, config))
        if self.handler_type == SERVICE_POOL:
            # a service pool's queue is durable and shared: classic or quorum
            # as AMQP_QUEUE_TYPE says; broadcast/singleton queues stay classic
            # (auto-delete or exclusive). The dead-letter queue comes first:
            # a quorum queue's delivery limit dead-letters into it.
            queues.apply(self.queue, config)
            durable.append(self.queue)
            exchanges.append(self.queue.exchange)
        # QueueTypeMismatch here stops the service at start (docs/runbooks/quorum-queues.md)
        queues.declare_all(self.amqp_uri, durable, exchanges)

    @property
    def max_attempts(self) -> int:
        return len(self.retry_delays) + 1

    def unpack_message_headers(self, message):
        # Only nameko's own context goes into the worker (and from there into
        # whatever it publishes); retry bookkeeping and x-death stay behind.
        context = super().unpack_message_headers(message)
        return {k: v for k, v in context.items() if not k.startswith("x-")}

    def handle_undecodable(self, message, exc):
        self._give_up(message, NonRetryable(f"cannot decode the {self.event_name} message: {exc}"))

    def handle_message(self, body, message):
        try:
            payload = contracts.load_event(self.event_name, body)
        except ValidationError as exc:
            self._give_up(message, NonRetryable(f"payload fails {self.event_name}: {exc.messages}"))
            return
        context_data = self.unpack_message_headers(message)
        handle_result = partial(self.handle_result, message)
        try:
            self.container.spawn_worker(
                self, (payload,), {}, context_data=context_data, handle_result=handle_result
            )
        except ContainerBeingKilled:
            self.queue_consumer.requeue_message(message)

    def handle_message_processed(self, message, result=None, exc_info=None):
        if exc_info is None:
            self.queue_consumer.ack_message(message)
            return
        exc = exc_info[1]
        attempt = int((message.headers or {}).get(ATTEMPT_HEADER, 1))
        # the service's database down is not the message's fault: it waits at
        # the longest delay for as long as the outage lasts, never dead-lettered for it
        waits_out = is_outage(exc) and bool(self.retry_delays)
        if isinstance(exc, NonRetryable) or (attempt >= self.max_attempts and not waits_out):
            self._give_up(message, exc, attempt, exc_info)
        else:
            self._retry(message, exc, attempt)

    def _publish_or_requeue(self, message, **publish_kwargs) -> bool:
        try:
            # A body published without a content type is raw bytes: say so,
            # or kombu would serialise it as JSON.
            self.publisher.publish(
                message.body,
                content_type=message.content_type or "application/data",
                content_encoding=message.content_encoding or "binary",
                **publish_kwargs,
            )
        except Exception:
            log.exception("could not republish a failed %s message; requeueing it", self.event_name)
            self.queue_consumer.requeue_message(message)
            return False
        self.queue_consumer.ack_message(message)
        return True

    def _retry(self, message, exc, attempt):
        delay = self.retry_delays[min(attempt, len(self.retry_delays)) - 1]
        headers = republish_headers(message.headers)
        headers[ATTEMPT_HEADER] = min(attempt + 1, self.max_attempts)
        headers[ERROR_HEADER] = _describe(exc)
        if self._publish_or_requeue(
            message, exchange=retry_exchange(delay), routing_key=self.queue.name, headers=headers
        ):
            EVENTS_RETRIED.labels(self.container.service_name, self.event_name).inc()
            log.warning(
                "%s handler failed (attempt %d of %d), retrying in %d ms: %s",
                self.event_name, attempt, self.max_attempts, delay, _describe(exc),
            )

    def _give_up(self, message, exc, attempt=1, exc_info=None):
        headers = republish_headers(message.headers)
        headers.update({
            ERROR_HEADER: _describe(exc),
            TRACEBACK_HEADER: "".join(traceback.format_exception(*exc_info))[-8000:] if exc_info else "",
            ORIGINAL_QUEUE_HEADER: self.queue.name,
            "x-darkroom-attempts": attempt,
            "x-darkroom-event": self.event_name,
            "x-darkroom-service": self.container.service_name,
            "x-darkroom-dead-lettered-at": isoformat(utcnow()),
        })
        if self._publish_or_requeue(
            message, exchange=dead_letter_exchange(), routing_key=self.queue.name, headers=headers
        ):
            EVENTS_DEAD_LETTERED.labels(self.container.service_name, self.event_name).inc()
            log.error(
                "%s message dead-lettered to %s after %d attempt(s): %s",
                self.event_name, dlq_name(self.queue.name), attempt, _describe(exc),
            )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


event_handler = ReliableEventHandler.decorator
