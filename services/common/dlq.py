"""Dead-letter queues over AMQP alone: peek at dead letters, describe them,
replay them to the queue that failed each, with publisher confirms.

A dead letter is a message :mod:`services.common.messaging` gave up on, in
``dlq.<queue>`` with its story in ``x-darkroom-*`` headers. Replaying publishes
it again to the default exchange with ``routing_key`` = the queue that failed,
so only that consumer sees it again (not every subscriber of the event), with
its body, content type and ``nameko.*`` headers, without the bookkeeping
headers, and with ``x-darkroom-replays`` counted; the dead letter is acked only
once the broker confirmed the publish.

Two callers: ``darkroom-ops dlq`` (ops/dlq.py: any queue of the vhost, found
through the management API) and every service's operator RPCs
(services/common/service.py: the dead-letter queues of its own handlers).
Everything here takes an open kombu connection and needs nothing but AMQP.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from amqp.exceptions import NotFound
from nameko.amqp.publish import Publisher

from services.common.ids import isoformat
from services.common.messaging import (
    ERROR_HEADER,
    ORIGINAL_QUEUE_HEADER,
    REPLAYS_HEADER,
    TRACEBACK_HEADER,
    republish_headers,
)
from services.common.queues import DLQ_PREFIX

CORRELATION_HEADER = "nameko.correlation_id"
RESTAMPED_HEADER = "x-darkroom-restamped-at"  # when `dlq restamp` moved it (its TTL restarted)


class RepublishFailed(Exception):
    """A publish was not confirmed: ``done`` dead letters were moved before it,
    the one that failed went back to ``dlq``."""

    def __init__(self, done: int, dlq: str, to: str, error: BaseException):
        super().__init__(done, dlq, to, f"{type(error).__name__}: {error}")
        self.done, self.dlq, self.to = done, dlq, to
        self.error = f"{type(error).__name__}: {error}"


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

    def summary(self) -> dict:
        """What an operator's screen shows: no body, no traceback (either can
        hold personal data)."""
        return {name: getattr(self, name) for name in (
            "event", "error", "attempts", "replays", "dead_lettered_at", "original_queue",
            "correlation_id", "expires_at")}


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
        # RabbitMQ's own dead-lettering (a quorum queue's delivery limit) leaves its reason
        error=headers.get(ERROR_HEADER) or (
            f"dead-lettered by RabbitMQ: {headers['x-first-death-reason']}"
            if headers.get("x-first-death-reason") else None),
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


def size(conn, queue: str) -> int | None:
    """Ready messages in ``queue``, or None when there is no such queue."""
    channel = conn.channel()
    try:
        _, count, _ = channel.queue_declare(queue=queue, passive=True)
    except NotFound:
        return None
    finally:
        try:
            channel.close()
        except Exception:  # already closed by the broker's 404
            pass
    return count


def peek(conn, dlq: str, limit: int = 10, ttl_ms: int | None = None) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``dlq``, described; they all stay in the queue."""
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


def republish(conn, amqp_uri: str, dlq: str, limit: int | None,
              target: Callable[[Any], str], headers: Callable[[Any], dict],
              on_each: Callable[[], Any] | None = None) -> int:
    """Take the dead letters there now (at most ``limit``), publish each again
    to the default exchange under ``target(message)`` with ``headers(message)``
    and its body and content type, and ack it only once the broker confirmed;
    a failed publish puts it back and raises :class:`RepublishFailed`. Returns
    how many were moved; ``on_each()`` after each. ``dlq`` must exist."""
    publisher = Publisher(amqp_uri, use_confirms=True, mandatory=True, retry=False)
    # Only what is there now: a message that comes back (a replay failing
    # again, a restamped one) must not be taken again in a loop.
    todo = size(conn, dlq) or 0
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
                raise RepublishFailed(done, dlq, to, exc) from None
            message.ack()
            done += 1
            if on_each is not None:
                on_each()
    finally:
        channel.close()
    return done


def replay(conn, amqp_uri: str, dlq: str, limit: int | None = None,
           on_each: Callable[[], Any] | None = None) -> int:
    """Replay up to ``limit`` dead letters of ``dlq`` (all that are there now
    if None) to the queue that failed each; return how many were replayed."""
    return republish(conn, amqp_uri, dlq, limit,
                     target=lambda message: original_queue(dlq, message.headers or {}),
                     headers=lambda message: replay_headers(message.headers), on_each=on_each)
