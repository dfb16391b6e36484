"""Moving Darkroom's durable queues between classic and quorum (``queues migrate``).

A queue's type cannot change in place (RabbitMQ refuses the declaration with
``PRECONDITION_FAILED``), so each queue of the other type is moved, with
Darkroom stopped (no consumers; the command refuses a queue that has one):

1. a holding queue ``<queue>.migrating`` of the new type is declared and given
   the queue's bindings, so a message published meanwhile reaches it;
2. every message of the queue is copied into the holding queue (body and
   every property: headers, reply-to, correlation id, persistence), each acked
   only once the broker confirmed the copy;
3. the emptied queue is deleted (``if-empty``: a message that came in between
   is drained first) and declared again with the arguments the services
   declare it with (:func:`services.common.queues.queue_arguments`), and bound
   as before;
4. the holding queue is unbound, drained into the new queue the same way, and
   deleted.

No message is lost: at every moment each one is in a queue, and it leaves one
only once the other holds it. docs/runbooks/quorum-queues.md is the procedure
around it.
"""

from __future__ import annotations

import amqp

from ops.errors import OpsError
from ops.rabbit import connect, list_queues, queue_bindings, vhost_of
from services.common import queues

HOLDING_SUFFIX = ".migrating"


def plan(config: dict, to: str) -> list[dict]:
    """The Darkroom queues of the vhost that are not yet ``to``: ``[{queue, type, consumers}]``."""
    if to not in queues.QUEUE_TYPES:
        raise OpsError(f"--to must be one of {', '.join(queues.QUEUE_TYPES)}", exit_code=2)
    found = list_queues(config["RABBIT_MANAGEMENT_URL"], vhost_of(config["AMQP_URI"]))
    return [{"queue": q["name"], "type": q.get("type") or "classic",
             "consumers": int(q.get("consumers") or 0)}
            for q in found
            if queues.is_darkroom_queue(q["name"]) and not q["name"].endswith(HOLDING_SUFFIX)
            and q.get("durable") and not q.get("auto_delete") and not q.get("exclusive")
            and (q.get("type") or "classic") != to]


def _move(channel, source: str, target: str) -> int:
    """Copy every message of ``source`` to ``target`` (default exchange, publisher
    confirms), acking each once confirmed; returns how many."""
    moved = 0
    while True:
        message = channel.basic_get(source, no_ack=False)
        if message is None:
            return moved
        copy = amqp.Message(message.body, **message.properties)
        channel.basic_publish(copy, exchange="", routing_key=target)  # waits for the confirm
        channel.basic_ack(message.delivery_tag)
        moved += 1


def _bind(channel, queue: str, bindings: list[dict], unbind: bool = False) -> None:
    for b in bindings:
        call = channel.queue_unbind if unbind else channel.queue_bind
        call(queue, b["source"], routing_key=b["routing_key"], arguments=b.get("arguments") or {})


def migrate_queue(config: dict, name: str, to: str) -> int:
    """Move ``name`` to a queue of type ``to``; returns how many messages it held."""
    settings = {**config, "AMQP_QUEUE_TYPE": to}
    arguments = queues.queue_arguments(name, settings)
    holding = name + HOLDING_SUFFIX
    bindings = queue_bindings(config["RABBIT_MANAGEMENT_URL"], vhost_of(config["AMQP_URI"]), name)
    with connect(config["AMQP_URI"]) as conn:
        channel = conn.channel()
        try:
            channel.confirm_select()
            channel.queue_declare(holding, durable=True, auto_delete=False,
                                  arguments={"x-queue-type": to})
            _bind(channel, holding, bindings)
            moved = 0
            while True:  # a message that comes in after the drain makes the delete refuse
                moved += _move(channel, name, holding)
                _, count, consumers = channel.queue_declare(name, passive=True)
                if consumers:
                    raise OpsError(f"{name} has {consumers} consumer(s): stop Darkroom first "
                                   f"(its messages are safe in {holding}; run the command again)")
                if count == 0:
                    channel.queue_delete(name, if_empty=True)
                    break
            channel.queue_declare(name, durable=True, auto_delete=False, arguments=arguments)
            _bind(channel, name, bindings)
            _bind(channel, holding, bindings, unbind=True)
            _move(channel, holding, name)
            channel.queue_delete(holding, if_empty=True)
        finally:
            try:
                channel.close()
            except Exception:
                pass
    return moved


def migrate(config: dict, to: str) -> list[dict]:
    """Move every Darkroom queue of the vhost that is not ``to`` yet:
    ``[{queue, from, to, messages}]``. Refuses while any has a consumer."""
    todo = plan(config, to)
    busy = [q["queue"] for q in todo if q["consumers"]]
    if busy:
        raise OpsError(f"stop Darkroom's services and gateway first: {', '.join(busy)} "
                       f"{'has' if len(busy) == 1 else 'have'} consumers")
    return [{"queue": q["queue"], "from": q["type"], "to": to,
             "messages": migrate_queue(config, q["queue"], to)} for q in todo]
