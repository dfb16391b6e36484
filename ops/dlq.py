"""Dead-letter queues: list, peek, replay, restamp, purge.

Any ``dlq.*`` queue of the vhost, found through the RabbitMQ management API;
what a dead letter is and how a replay goes (to the queue that failed it,
acked once the broker confirmed) is :mod:`services.common.dlq`, which the
services' own operators' RPCs use too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ops.errors import OpsError
from ops.rabbit import connect, list_queue_names, message_count, queue_message_ttl, vhost_of
from services.common import dlq as letters
from services.common.dlq import (  # noqa: F401 - the CLI's names for them
    CORRELATION_HEADER,
    RESTAMPED_HEADER,
    DeadLetter,
    describe,
    expiry,
    original_queue,
    raw_body,
    replay_headers,
)
from services.common.ids import isoformat, utcnow
from services.common.messaging import DLQ_PREFIX, dlq_name


def resolve(queue: str) -> str:
    """Accept ``dlq.<queue>`` or the original ``<queue>``."""
    queue = queue.strip()
    if not queue or queue == DLQ_PREFIX:
        raise OpsError("no queue name given")
    return queue if queue.startswith(DLQ_PREFIX) else dlq_name(queue)


def list_dlqs(config: dict) -> list[tuple[str, int]]:
    """Every ``dlq.*`` queue of the vhost with its message count."""
    amqp_uri = config["AMQP_URI"]
    names = [n for n in list_queue_names(config["RABBIT_MANAGEMENT_URL"], vhost_of(amqp_uri))
             if n.startswith(DLQ_PREFIX)]
    with connect(amqp_uri) as conn:
        result = []
        for name in names:
            try:
                result.append((name, message_count(conn, name)))
            except OpsError:  # deleted since it was listed
                continue
        return result


def show(config: dict, queue: str, limit: int = 10) -> list[DeadLetter]:
    """Peek at up to ``limit`` dead letters; they all stay in the queue."""
    dlq = resolve(queue)
    ttl_ms = queue_message_ttl(config["RABBIT_MANAGEMENT_URL"], vhost_of(config["AMQP_URI"]), dlq)
    with connect(config["AMQP_URI"]) as conn:
        message_count(conn, dlq)  # exists?
        return letters.peek(conn, dlq, limit, ttl_ms)


def _moving(config: dict, dlq: str, verb: str, move: Callable[..., int],
           bar: Any = None) -> int:
    """``move(conn, on_each)`` (:mod:`services.common.dlq`'s republish or
    replay) over a checked connection to an existing ``dlq``, a failed publish
    told as an OpsError; ``bar.update(1)`` after each (a progress bar, ops/output.py)."""
    with connect(config["AMQP_URI"]) as conn:
        message_count(conn, dlq)  # exists?
        try:
            return move(conn, None if bar is None else lambda: bar.update(1))
        except letters.RepublishFailed as failed:
            raise OpsError(
                f"{verb} {failed.done}; could not republish to {failed.to!r} "
                f"(the dead letter stays in {dlq}): {failed.error}"
            ) from None


def replay(config: dict, queue: str, limit: int | None = None, bar: Any = None) -> int:
    """Replay up to ``limit`` dead letters (all that are there now if None) to
    the queue that failed each; return how many were replayed (``bar``:
    updated after each)."""
    dlq = resolve(queue)
    return _moving(config, dlq, "replayed", lambda conn, on_each: letters.replay(
        conn, config["AMQP_URI"], dlq, limit, on_each), bar)


def count(config: dict, queue: str) -> int:
    """How many dead letters ``queue`` holds now (OpsError if there is no such queue)."""
    with connect(config["AMQP_URI"]) as conn:
        return message_count(conn, resolve(queue))


def replay_plan(config: dict, queue: str | None, limit: int | None = None) -> list[dict]:
    """What a replay would move: ``[{"queue", "messages"}]`` for ``queue``, or
    for every non-empty ``dlq.*`` queue when it is None (``--all``)."""
    found = ([(name, n) for name, n in list_dlqs(config) if n] if queue is None
             else [(resolve(queue), count(config, queue))])
    return [{"queue": name, "messages": min(n, limit) if limit is not None else n}
            for name, n in found]


def restamp(config: dict, queue: str, bar: Any = None) -> int:
    """Move every dead letter there now to the back of its own queue,
    unchanged (body, properties, headers; ``x-darkroom-restamped-at`` added),
    so that it gets the queue's TTL.

    RabbitMQ stamps a message's expiry when it enters a queue: dead letters
    queued before the ``darkroom-dead-letter-ttl`` policy existed never
    expire, and (classic queues drop expired messages from the head only)
    hold up the expiry of every newer one behind them. Run once after the
    upgrade; each moved message then expires DEAD_LETTER_TTL_DAYS from now.
    Returns how many were moved (``bar``: updated after each)."""
    dlq = resolve(queue)
    return _moving(config, dlq, "moved", lambda conn, on_each: letters.republish(
        conn, config["AMQP_URI"], dlq, None, target=lambda message: dlq,
        headers=lambda message: {**(message.headers or {}), RESTAMPED_HEADER: isoformat(utcnow())},
        on_each=on_each), bar)


def purge(config: dict, queue: str) -> int:
    """Delete every message of a DLQ; return how many there were."""
    dlq = resolve(queue)
    with connect(config["AMQP_URI"]) as conn:
        message_count(conn, dlq)  # exists?
        channel = conn.channel()
        try:
            return channel.queue_purge(dlq) or 0
        finally:
            channel.close()
