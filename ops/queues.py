"""Moving Darkroom's durable queues between classic and quorum (``queues migrate``).

A queue's type cannot change in place (RabbitMQ refuses the declaration with
``PRECONDITION_FAILED``), so each queue of the other type is moved, with
Darkroom stopped (no consumers; the command refuses a queue that has one):

1. a holding queue ``<queue>.migrating`` of the new type is declared and given
   the queue's bindings, so a message published meanwhile reaches it;
2. every message of the queue is copied into the holding queue (body, routing
   key and every property: headers, reply-to, correlation id, persistence),
   each acked only once the broker confirmed the copy;
3. the emptied queue is deleted (a message published meanwhile reaches the
   holding queue as well, through the same bindings) and declared again with the arguments the services
   declare it with (:func:`services.common.queues.queue_arguments`), and bound
   as before;
4. the holding queue is unbound, drained into the new queue the same way, and
   deleted.

No message is lost: at every moment each one is in a queue, and it leaves one
only once the other holds it. A publisher left running could see a message
that came in during step 2 delivered twice (consumers are idempotent on
``event_id``); stop the gateway too. docs/runbooks/quorum-queues.md is the procedure
around it.
"""

from __future__ import annotations

from contextlib import contextmanager

import amqp
from amqp.exceptions import NotFound

from ops.errors import OpsError
from ops.rabbit import connect, list_queues, queue_bindings, vhost_of
from services.common import queues

HOLDING_SUFFIX = ".migrating"
MOVE_EXCHANGE_PREFIX = "darkroom.migrate."


def plan(config: dict, to: str) -> list[dict]:
    """The Darkroom queues of the vhost that are not yet declared as the
    services declare them with ``AMQP_QUEUE_TYPE=to`` (another type, or
    another ``AMQP_DELIVERY_LIMIT``): ``[{queue, type, consumers}]``."""
    if to not in queues.QUEUE_TYPES:
        raise OpsError(f"--to must be one of {', '.join(queues.QUEUE_TYPES)}", exit_code=2)
    settings = {**config, "AMQP_QUEUE_TYPE": to}
    found = list_queues(config["RABBIT_MANAGEMENT_URL"], vhost_of(config["AMQP_URI"]))
    # a holding queue left by an interrupted run: its queue is moved again
    held = {q["name"][:-len(HOLDING_SUFFIX)] for q in found if q["name"].endswith(HOLDING_SUFFIX)}
    todo = [{"queue": q["name"], "type": q.get("type") or "classic",
             "consumers": int(q.get("consumers") or 0)}
            for q in found
            if queues.is_darkroom_queue(q["name"]) and not q["name"].endswith(HOLDING_SUFFIX)
            and q.get("durable") and not q.get("auto_delete") and not q.get("exclusive")
            and ((q.get("arguments") or {}) != queues.queue_arguments(q["name"], settings)
                 or q["name"] in held)]
    missing = held - {q["name"] for q in found}
    return todo + [{"queue": name, "type": "none", "consumers": 0} for name in sorted(missing)]


def _move(channel, source: str, target: str) -> int:
    """Copy every message of ``source`` to ``target``, acking each once the
    broker confirmed the copy; returns how many.

    The copies go through a fanout exchange bound to ``target`` alone, under
    the routing key each message came with: nameko routes an RPC request by
    it, and a retry queue dead-letters a message back to the queue it names."""
    exchange = MOVE_EXCHANGE_PREFIX + target
    channel.exchange_declare(exchange, "fanout", durable=False, auto_delete=False)
    channel.queue_bind(target, exchange)
    moved = 0
    try:
        while True:
            message = channel.basic_get(source, no_ack=False)
            if message is None:
                return moved
            copy = amqp.Message(message.body, **message.properties)
            channel.basic_publish(copy, exchange=exchange,  # waits for the confirm
                                  routing_key=message.delivery_info["routing_key"])
            channel.basic_ack(message.delivery_tag)
            moved += 1
    finally:
        channel.exchange_delete(exchange)


def _bind(channel, queue: str, bindings: list[dict], unbind: bool = False) -> None:
    for b in bindings:
        call = channel.queue_unbind if unbind else channel.queue_bind
        call(queue, b["source"], routing_key=b["routing_key"], arguments=b.get("arguments") or {})


@contextmanager
def _channel(conn):
    """A channel with publisher confirms. Each step of a move takes a new one:
    RabbitMQ 3.10 fails a channel that used a queue before it was deleted and
    declared again with another type."""
    channel = conn.channel()
    channel.confirm_select()
    try:
        yield channel
    finally:
        try:
            channel.close()
        except Exception:
            pass


def migrate_queue(config: dict, name: str, to: str) -> int:
    """Move ``name`` to a queue of type ``to``; returns how many messages it held."""
    settings = {**config, "AMQP_QUEUE_TYPE": to}
    arguments = queues.queue_arguments(name, settings)
    holding = name + HOLDING_SUFFIX
    vhost = vhost_of(config["AMQP_URI"])
    moved = 0
    with connect(config["AMQP_URI"]) as conn:
        if _exists(conn, name):
            bindings = queue_bindings(config["RABBIT_MANAGEMENT_URL"], vhost, name)
        else:  # an interrupted run deleted it: the holding queue has its bindings
            bindings = queue_bindings(config["RABBIT_MANAGEMENT_URL"], vhost, holding)
        with _channel(conn) as channel:
            channel.queue_declare(holding, durable=True, auto_delete=False,
                                  arguments={"x-queue-type": to})
            _bind(channel, holding, bindings)
            while _exists(conn, name):
                moved += _move(channel, name, holding)
                _, count, consumers = channel.queue_declare(name, passive=True)
                if consumers:
                    raise OpsError(f"{name} has {consumers} consumer(s): stop Darkroom first "
                                   f"(its messages are safe in {holding}; run the command again)")
                if count == 0:
                    # no if-empty (quorum queues refuse it): a message published
                    # from here on reaches the holding queue too, through the
                    # same bindings
                    channel.queue_delete(name)
                    break
        with _channel(conn) as channel:
            channel.queue_declare(name, durable=True, auto_delete=False, arguments=arguments)
            _bind(channel, name, bindings)
            _bind(channel, holding, bindings, unbind=True)
        with _channel(conn) as channel:
            while _move(channel, holding, name) or channel.queue_declare(holding, passive=True)[1]:
                pass  # unbound: nothing comes in any more
            channel.queue_delete(holding)
    return moved


def _exists(conn, name: str) -> bool:
    channel = conn.channel()
    try:
        channel.queue_declare(name, passive=True)
        return True
    except NotFound:
        return False
    finally:
        try:
            channel.close()
        except Exception:  # closed by the broker's 404
            pass


def _consumers(conn, name: str) -> int:
    channel = conn.channel()
    try:
        return channel.queue_declare(name, passive=True)[2]
    finally:
        channel.close()


def migrate(config: dict, to: str) -> list[dict]:
    """Move every Darkroom queue of the vhost that is not ``to`` yet:
    ``[{queue, from, to, messages}]``. Refuses while any has a consumer."""
    todo = plan(config, to)
    with connect(config["AMQP_URI"]) as conn:  # exact now (the management API's lag)
        busy = [q["queue"] for q in todo
                if _exists(conn, q["queue"]) and _consumers(conn, q["queue"])]
    if busy:
        raise OpsError(f"stop Darkroom's services and gateway first: {', '.join(busy)} "
                       f"{'has' if len(busy) == 1 else 'have'} consumers")
    return [{"queue": q["queue"], "from": q["type"], "to": to,
             "messages": migrate_queue(config, q["queue"], to)} for q in todo]
