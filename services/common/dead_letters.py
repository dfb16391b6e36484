"""Dead letters that name an erased user, removed at the erasure.

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

from services.common.messaging import dlq_name

CONNECT_TIMEOUT_SECONDS = 5


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


class DeadLetters(DependencyProvider):
    """``self.dead_letters(user_id, email)`` removes the dead letters of this
    service's event handlers that name the user; returns how many."""

    def _queues(self) -> list[str]:
        return [ext.queue.name for ext in self.container.entrypoints
                if isinstance(ext, EventHandler) and getattr(ext, "queue", None) is not None]

    def get_dependency(self, worker_ctx):
        amqp_uri = self.container.config[AMQP_URI_CONFIG_KEY]

        def remove(*needles: str) -> int:
            return remove_naming(amqp_uri, self._queues(), [str(n) for n in needles if n])

        return remove
