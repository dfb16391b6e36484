"""Dead-letter queues: list, peek, replay, purge.

A dead letter is a message :mod:`services.common.messaging` gave up on, in
``dlq.<queue>`` with its story in ``x-darkroom-*`` headers. Replaying publishes
it again to the default exchange with ``routing_key`` = the queue that failed,
so only that consumer sees it again (not every subscriber of the event), with
its body, content type and ``nameko.*`` headers, without the bookkeeping
headers, and with ``x-darkroom-replays`` counted; the dead letter is acked only
once the broker confirmed the publish.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from nameko.amqp.publish import Publisher

from ops.errors import OpsError
from ops.rabbit import connect, list_queue_names, message_count, queue_message_ttl, vhost_of
from services.common.ids import isoformat, utcnow
from services.common.messaging import (
    DLQ_PREFIX,
    ERROR_HEADER,
    ORIGINAL_QUEUE_HEADER,
    REPLAYS_HEADER,
    TRACEBACK_HEADER,
    dlq_name,
    republish_headers,
)

CORRELATION_HEADER = "nameko.correlation_id"
RESTAMPED_HEADER = "x-darkroom-restamped-at"  # when `dlq restamp` moved it (its TTL restarted)


def resolve(queue: str) -> str:
    """Accept ``dlq.<queue>`` or the original ``<queue>``."""
    queue = queue.strip()
    if not queue or queue == DLQ_PREFIX:
        raise OpsError("no queue name given")
    return queue if queue.startswith(DLQ_PREFIX) else dlq_name(queue)


def original_queue(dlq: str, headers: dict) -> str:
    """Where a dead letter came from: our header, RabbitMQ's, or the DLQ's name."""
    return str(
        headers.get(ORIGINAL_QUEUE_HEADER)
        or headers.get("x-first-death-queue")
        or dlq[len(DLQ_PREFIX):]
    )


def replay_headers(headers: dict | None) -> dict:
    """The headers of a replayed message: nameko's context kept, every ``x-*``
    dropped, the replay counted."""
    kept = republish_headers(headers)
    kept[REPLAYS_HEADER] = int((headers or {}).get(REPLAYS_HEADER) or 0) + 1
    return kept


def raw_body(message) -> bytes:
    """The body as the broker holds it (py-amqp decodes bodies that name their encoding)."""
    body = message.body
    if isinstance(body, str):
        return body.encode(message.content_encoding or "utf-8")
    return bytes(body)


@dataclass
class DeadLetter:
    event: str | None
    error: str | None
    attempts: int | None
    replays: int
    dead_lettered_at: str | None
    original_queue: str
    correlation_id: str | None
    content_type: str | None
    body: Any
    traceback: str | None = None
    expires_at: str | None = None  # when the queue's TTL drops it (None: no TTL, or unknown)

    def to_dict(self) -> dict:
        return asdict(self)


def expiry(headers: dict, ttl_ms: int | None) -> str | None:
    """When a dead letter expires: TTL after it entered the queue (its last
    restamp, else when it was dead-lettered), if both are known."""
    entered = headers.get(RESTAMPED_HEADER) or headers.get("x-darkroom-dead-lettered-at")
    if not ttl_ms or not entered:
        return None
    try:
        when = datetime.fromisoformat(str(entered).replace("Z", "+00:00"))
    except ValueError:
        return None
    return isoformat(when + timedelta(milliseconds=ttl_ms)) if when.tzinfo else None


def describe(dlq: str, message, ttl_ms: int | None = None) -> DeadLetter:
    headers = dict(message.headers or {})
    raw = raw_body(message)
    body: Any
    try:
        body = json.loads(raw) if "json" in (message.content_type or "") else raw.decode()
    except (ValueError, UnicodeDecodeError):
        body = raw.decode("utf-8", errors="replace")
    attempts = headers.get("x-darkroom-attempts")
    return DeadLetter(
        event=headers.get("x-darkroom-event"),
        error=headers.get(ERROR_HEADER),
        attempts=int(attempts) if attempts is not None else None,
        replays=int(headers.get(REPLAYS_HEADER) or 0),
        dead_lettered_at=headers.get("x-darkroom-dead-lettered-at"),
        original_queue=original_queue(dlq, headers),
        correlation_id=headers.get(CORRELATION_HEADER),
        content_type=message.content_type,
        body=body,
        traceback=headers.get(TRACEBACK_HEADER) or None,
        expires_at=expiry(headers, ttl_ms),
    )


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
        channel = conn.channel()
        try:
            letters = []
            while len(letters) < limit:
                message = channel.basic_get(dlq, no_ack=False)
                if message is None:
                    break
                letters.append(describe(dlq, channel.message_to_python(message), ttl_ms))
        finally:
            # unacked messages go back to the queue, in their order
            channel.basic_recover(requeue=True)
            channel.close()
        return letters


def _republish(config: dict, dlq: str, limit: int | None, verb: str,
               target: Callable[[Any], str], headers: Callable[[Any], dict],
               bar: Any = None) -> int:
    """Take the dead letters there now (at most ``limit``), publish each again
    to the default exchange under ``target(message)`` with ``headers(message)``
    and its body and content type, and ack it only once the broker confirmed;
    a failed publish puts it back and stops. Returns how many were moved;
    ``bar.update(1)`` after each (a progress bar, ops/output.py)."""
    amqp_uri = config["AMQP_URI"]
    publisher = Publisher(amqp_uri, use_confirms=True, mandatory=True, retry=False)
    with connect(amqp_uri) as conn:
        # Only what is there now: a message that comes back (a replay failing
        # again, a restamped one) must not be taken again in a loop.
        todo = message_count(conn, dlq)
        if limit is not None:
            todo = min(todo, limit)
        channel = conn.channel()
        done = 0
        try:
            while done < todo:
                raw = channel.basic_get(dlq, no_ack=False)
                if raw is None:
                    break
                message = channel.message_to_python(raw)
                to = target(message)
                try:
                    publisher.publish(
                        message.body,
                        exchange="",
                        routing_key=to,
                        headers=headers(message),
                        content_type=message.content_type or "application/data",
                        content_encoding=message.content_encoding or "binary",
                    )
                except Exception as exc:
                    message.requeue()
                    raise OpsError(
                        f"{verb} {done}; could not republish to {to!r} "
                        f"(the dead letter stays in {dlq}): {type(exc).__name__}: {exc}"
                    ) from None
                message.ack()
                done += 1
                if bar is not None:
                    bar.update(1)
        finally:
            channel.close()
    return done


def replay(config: dict, queue: str, limit: int | None = None, bar: Any = None) -> int:
    """Replay up to ``limit`` dead letters (all that are there now if None) to
    the queue that failed each; return how many were replayed (``bar``:
    updated after each)."""
    dlq = resolve(queue)
    return _republish(config, dlq, limit, "replayed",
                      target=lambda message: original_queue(dlq, message.headers or {}),
                      headers=lambda message: replay_headers(message.headers), bar=bar)


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
    return _republish(config, dlq, None, "moved", target=lambda message: dlq,
                      headers=lambda message: {**(message.headers or {}),
                                               RESTAMPED_HEADER: isoformat(utcnow())}, bar=bar)


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
