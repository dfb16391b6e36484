"""A service's own dead letters: those that name an erased user, removed at
the erasure; and the operators' view of them (list, replay).

A dead letter is an event a handler gave up on, kept in ``dlq.<queue>``
(:mod:`services.common.messaging`) until an operator replays or purges it;
its body and headers can hold a user id or an address. At an erasure every
service removes, from the dead-letter queues of its own event handlers, the
messages whose body or headers contain one of the user's identifiers
(:class:`DeadLetters`). Each service does its own queues over its own AMQP
connection: it knows their names, and neither the management API (not
published by the compose stack) nor any other process is needed.

A queue's messages are taken one by one without acknowledgement, those that
name the user are acknowledged (deleted), and the channel is closed: the
others go back to the queue in their order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from amqp.exceptions import NotFound
from kombu import Connection
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.events import EventHandler
from nameko.extensions import DependencyProvider

from services.common import dlq
from services.common.errors import invalid_request, not_found, service_unavailable
from services.common.messaging import dlq_name
from services.common.queues import DLQ_PREFIX

CONNECT_TIMEOUT_SECONDS = 5
REPLAY_MAX = 10_000  # dead letters replayed by one operator's request


def _names(message, needles: list[bytes]) -> bool:
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    headers = json.dumps(message.headers or {}, default=str).encode()
    text = (body + b"\n" + headers).lower()
    return any(needle in text for needle in needles)


def remove_naming(amqp_uri: str, queues: Iterable[str], needles: Iterable[str]) -> int:
    """Delete the dead letters of ``queues`` (the handlers' queues: their
    ``dlq.<queue>`` is searched) whose body or headers contain one of
    ``needles`` (case-insensitive); return how many. A queue that does not
    exist is skipped; an unreachable broker raises (the caller's event is
    retried)."""
    wanted = [n.lower().encode() for n in needles if n]
    if not wanted:
        return 0
    removed = 0
    with Connection(amqp_uri, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=1)
        for queue in dict.fromkeys(queues):
            name = dlq_name(queue)
            channel = conn.channel()
            try:
                try:
                    _, count, _ = channel.queue_declare(queue=name, passive=True)
                except NotFound:
                    continue
                for _ in range(count):  # what is there now, each once
                    message = channel.basic_get(name, no_ack=False)
                    if message is None:
                        break
                    if _names(message, wanted):
                        channel.basic_ack(message.delivery_tag)
                        removed += 1
            finally:
                try:
                    channel.close()  # the unacknowledged go back, in their order
                except Exception:  # closed by the broker already (no such queue)
                    pass
    return removed


def handler_queues(container) -> list[str]:
    """The queues ``container``'s event handlers consume: their dead letters
    are in ``dlq.<queue>``, this service's own."""
    return list(dict.fromkeys(
        ext.queue.name for ext in container.entrypoints
        if isinstance(ext, EventHandler) and getattr(ext, "queue", None) is not None))


class DeadLetters(DependencyProvider):
    """``self.dead_letters(user_id, email)`` removes the dead letters of this
    service's event handlers that name the user; returns how many."""

    def get_dependency(self, worker_ctx):
        amqp_uri = self.container.config[AMQP_URI_CONFIG_KEY]

        def remove(*needles: str) -> int:
            return remove_naming(amqp_uri, handler_queues(self.container),
                                 [str(n) for n in needles if n])

        return remove


class OwnDeadLetters(DependencyProvider):
    """``self.own_dead_letters``: the dead letters of this service's own event
    handlers (and of no other service's), for its operators' RPCs
    (services/common/service.py): list them, replay one queue's."""

    def get_dependency(self, worker_ctx):
        return OwnQueues(self.container.config[AMQP_URI_CONFIG_KEY],
                         handler_queues(self.container))


class OwnQueues:
    PEEK = 10  # dead letters shown per queue

    def __init__(self, amqp_uri: str, queues: list[str]):
        self.amqp_uri = amqp_uri
        self.dlqs = [dlq_name(queue) for queue in queues]

    def _connect(self) -> Connection:
        conn = Connection(self.amqp_uri, connect_timeout=CONNECT_TIMEOUT_SECONDS)
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=1)
        return conn

    def resolve(self, queue) -> str:
        """``dlq.<queue>`` (or ``<queue>``) when it is one of this service's
        dead-letter queues; 404 ``not_found`` otherwise."""
        name = queue if isinstance(queue, str) else ""
        name = name if name.startswith(DLQ_PREFIX) else dlq_name(name)
        if name not in self.dlqs:
            raise not_found("dead-letter queue")
        return name

    def list(self, peek: int = PEEK) -> list[dict]:
        """Every non-empty dead-letter queue: ``{"queue", "messages",
        "letters"}``, with up to ``peek`` letters described (no bodies: they
        can hold personal data); the letters stay queued."""
        found = []
        with self._connect() as conn:
            for name in self.dlqs:
                count = dlq.size(conn, name)
                if count:
                    found.append({"queue": name, "messages": count, "letters": [
                        letter.summary() for letter in dlq.peek(conn, name, peek)]})
        return found

    def replay(self, queue, limit: int | None = None) -> tuple[str, int]:
        """Replay up to ``limit`` (all there now if None) of ``queue``'s dead
        letters to the queues that failed them: ``(its name, how many)``."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or not 1 <= limit <= REPLAY_MAX):
            raise invalid_request(f"limit must be a whole number from 1 to {REPLAY_MAX}",
                                  fields={"limit": ["Not a valid limit."]})
        name = self.resolve(queue)
        with self._connect() as conn:
            if dlq.size(conn, name) is None:
                return name, 0  # declared when its handler starts: nothing dead-lettered yet
            try:
                return name, dlq.replay(conn, self.amqp_uri, name, limit)
            except dlq.RepublishFailed as failed:
                raise service_unavailable(
                    f"replayed {failed.done}; the broker did not confirm a replay to "
                    f"{failed.to} (the dead letter stays queued)", replayed=failed.done) from None
