"""The durable queues Darkroom declares, classic or quorum (``AMQP_QUEUE_TYPE``).

One home for the arguments every durable queue is declared with, whoever
declares it (a service's RPC consumer, an event handler, the dead-letter and
retry queues of :mod:`services.common.messaging`, ``darkroom-ops queues
migrate``): :func:`queue_arguments` reads them from the queue's name.

- ``AMQP_QUEUE_TYPE=classic`` (the default, ``make dev`` and the tests): no
  arguments but the retry queues' TTL, as before.
- ``AMQP_QUEUE_TYPE=quorum`` (compose's default): every durable queue is
  ``x-queue-type: quorum``, replicated over a cluster's nodes. An event
  handler's queue (``evt-…``) also gets ``x-delivery-limit``
  (``AMQP_DELIVERY_LIMIT``, default 20): a message redelivered past it (a
  consumer that dies on it again and again) is dead-lettered to
  ``dlq.<queue>`` instead of looping. The retry queues ``darkroom.retry.<ms>ms``
  are quorum too (RabbitMQ 3.10 and later expire and dead-letter messages of
  quorum queues); dead-lettering from a quorum queue is declared
  ``at-least-once`` (with ``x-overflow: reject-publish``, which it needs), so
  a message is not dropped between the two queues when a node fails.

Each client's own queues stay classic, as they must: nameko's RPC reply
queues ``rpc.reply-…`` (they expire 5 minutes after their client is gone,
which a quorum queue cannot be declared with on 3.10) and the auto-delete or
exclusive queues of broadcast and singleton handlers. Reply queues are
declared transient (``durable=False``; nameko declares them durable): on a
cluster, a durable classic queue whose node is down cannot be declared again
anywhere (``NOT_FOUND - home node … is down or inaccessible``) until that
node returns, so a client that reconnects to another node could not consume
its replies, and a service's whole consumer (its RPC and event queues share
the connection) would stop with it. A transient queue is deleted with its
node and declared afresh on the node the client reconnects to. Services use
:class:`RpcProxy` (not nameko's) for that; the gateway's pool does the same
(gateway/rpc.py, :func:`transient_reply_queue`).

A queue's type cannot change in place: RabbitMQ refuses to declare an
existing classic queue as quorum (``PRECONDITION_FAILED``).
:func:`declare` turns that refusal into :class:`QueueTypeMismatch`, which
stops the service at start and names the procedure (docs/runbooks/quorum-queues.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from amqp.exceptions import PreconditionFailed
from kombu import Queue
from nameko import rpc as nameko_rpc
from nameko.amqp.publish import get_connection
from nameko.constants import AMQP_URI_CONFIG_KEY

QUEUE_TYPES = ("classic", "quorum")
DEFAULT_DELIVERY_LIMIT = 20
RUNBOOK = "docs/runbooks/quorum-queues.md"

DEAD_LETTER_EXCHANGE = "darkroom.dead-letter"
DLQ_PREFIX = "dlq."
RETRY_PREFIX = "darkroom.retry."
EVENT_QUEUE_PREFIX = "evt-"
RPC_QUEUE_PREFIX = "rpc-"
_RETRY_NAME = re.compile(re.escape(RETRY_PREFIX) + r"(\d+)ms$")


class QueueTypeMismatch(RuntimeError):
    """A queue exists with other arguments than the ones Darkroom declares it with."""


def queue_type(config: Mapping[str, Any]) -> str:
    """``AMQP_QUEUE_TYPE``: ``classic`` (default) or ``quorum``; ValueError otherwise."""
    value = str(config.get("AMQP_QUEUE_TYPE") or "classic").strip().lower()
    if value not in QUEUE_TYPES:
        raise ValueError(f"AMQP_QUEUE_TYPE must be one of {', '.join(QUEUE_TYPES)}, not {value!r}")
    return value


def delivery_limit(config: Mapping[str, Any]) -> int:
    """``AMQP_DELIVERY_LIMIT``: deliveries of one message before a quorum event
    queue dead-letters it (default 20); ValueError unless positive."""
    raw = config.get("AMQP_DELIVERY_LIMIT")
    value = int(raw) if raw not in (None, "") else DEFAULT_DELIVERY_LIMIT
    if value <= 0:
        raise ValueError("AMQP_DELIVERY_LIMIT must be positive")
    return value


def retry_delay_ms(name: str) -> int | None:
    """The delay of a retry queue ``darkroom.retry.<ms>ms``; None for other names."""
    match = _RETRY_NAME.match(name)
    return int(match.group(1)) if match else None


def is_darkroom_queue(name: str) -> bool:
    """A durable queue Darkroom declares (what ``queues migrate`` moves)."""
    return (name.startswith((RPC_QUEUE_PREFIX, EVENT_QUEUE_PREFIX, DLQ_PREFIX))
            or retry_delay_ms(name) is not None)


def queue_arguments(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments the durable queue ``name`` is declared with under ``config``."""
    args: dict[str, Any] = {}
    quorum = queue_type(config) == "quorum"
    delay = retry_delay_ms(name)
    if delay is not None:
        # wait delay ms, then back to the failed queue (the routing key) through the default exchange
        args.update({"x-message-ttl": delay, "x-dead-letter-exchange": ""})
    elif quorum and name.startswith(EVENT_QUEUE_PREFIX):
        args.update({
            "x-delivery-limit": delivery_limit(config),
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": name,  # dlq.<name> is bound with it
        })
    if quorum:
        args["x-queue-type"] = "quorum"
        if "x-dead-letter-exchange" in args:
            args.update({"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
    return args


def apply(queue: Queue, config: Mapping[str, Any]) -> Queue:
    """Give ``queue`` (durable, nameko's or ours) its arguments, in place."""
    queue.queue_arguments = {**(queue.queue_arguments or {}), **queue_arguments(queue.name, config)}
    return queue


def declare(queue: Queue, channel) -> None:
    """Declare ``queue`` (and its binding) on ``channel``; QueueTypeMismatch
    when the queue exists with other arguments (the channel is then closed)."""
    try:
        queue(channel).declare()
    except PreconditionFailed as exc:
        wanted = (queue.queue_arguments or {}).get("x-queue-type", "classic")
        raise QueueTypeMismatch(
            f"RabbitMQ refused to declare queue {queue.name!r} as a {wanted} queue ({exc}): it "
            f"exists with other arguments (another type or delivery limit), and a queue's "
            f"arguments cannot change in place. Set AMQP_QUEUE_TYPE and AMQP_DELIVERY_LIMIT "
            f"back to what the queues have, or move them with "
            f"`darkroom-ops queues migrate --to {wanted}` while Darkroom is stopped "
            f"(see {RUNBOOK})."
        ) from None


def declare_all(amqp_uri: str, queues: list, exchanges: list = ()) -> None:
    """Declare ``exchanges`` then ``queues`` over one short connection (failover
    URIs accepted); QueueTypeMismatch as :func:`declare`."""
    with get_connection(amqp_uri) as connection:
        channel = connection.channel()
        try:
            for exchange in exchanges:
                exchange(channel).declare()
            for queue in queues:
                declare(queue, channel)
        finally:
            try:
                channel.close()
            except Exception:  # closed by the broker's refusal already
                pass


class RpcConsumer(nameko_rpc.RpcConsumer):
    """nameko's RPC consumer whose ``rpc-<service>`` queue has the arguments of
    ``AMQP_QUEUE_TYPE`` and is declared at setup: a queue of the other type
    stops the service there, with :class:`QueueTypeMismatch`."""

    def setup(self):
        new = self.queue is None
        super().setup()
        if new:
            config = self.container.config
            apply(self.queue, config)
            declare_all(config[AMQP_URI_CONFIG_KEY], [self.queue], [self.queue.exchange])


class Rpc(nameko_rpc.Rpc):
    rpc_consumer = RpcConsumer()

    def handle_result(self, message, worker_ctx, result, exc_info):
        """A database outage answers 503 ``service_unavailable``
        (:func:`services.common.db.outage_error`), not a RemoteError."""
        if exc_info is not None:
            # here, not at the top: the gateway imports this module for its reply
            # queues and must not load SQLAlchemy and alembic (tests/unit/test_imports.py)
            from services.common.db import outage_error

            replaced = outage_error(exc_info[1])
            if replaced is not None:
                exc_info = (type(replaced), replaced, exc_info[2])
        return super().handle_result(message, worker_ctx, result, exc_info)


rpc = Rpc.decorator
"""``@rpc`` for every Darkroom service (nameko's, on :class:`RpcConsumer`)."""


def transient_reply_queue(queue: Queue) -> Queue:
    """A client's RPC reply queue, made transient in place (see above)."""
    queue.durable = False
    return queue


class ReplyListener(nameko_rpc.ReplyListener):
    """nameko's reply listener with a transient reply queue: after a node is
    lost, the service's consumer declares it again on the node it reconnects to."""

    def setup(self):
        super().setup()  # registers with the queue consumer, which declares at start
        transient_reply_queue(self.queue)


class RpcProxy(nameko_rpc.RpcProxy):
    """``RpcProxy("billing")`` for every Darkroom service: nameko's, replies
    on a transient queue (:class:`ReplyListener`)."""

    rpc_reply_listener = ReplyListener()
