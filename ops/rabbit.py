"""RabbitMQ access for the ops commands: bounded AMQP connections and the
management API (which lists queues; counts come from AMQP, which is exact).

AMQP goes through kombu, nameko's own client, used synchronously: the same URI
and vhost parsing as the services, and replays published by nameko's Publisher
with the properties its consumers expect. A second client (pika) would read the
queues no better."""

from __future__ import annotations

import urllib.parse
from contextlib import contextmanager

import requests
from kombu import Connection

from ops.errors import OpsError
from services.common.dlq import size

CONNECT_TIMEOUT_SECONDS = 5


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def vhost_of(amqp_uri: str) -> str:
    return Connection(amqp_uri).virtual_host or "/"


@contextmanager
def connect(amqp_uri: str):
    conn = Connection(amqp_uri, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=1)
    except Exception as exc:
        conn.release()
        raise OpsError(f"cannot reach RabbitMQ at {safe_url(amqp_uri)}: {exc}") from None
    try:
        yield conn
    finally:
        conn.release()


def message_count(conn: Connection, queue: str) -> int:
    """Ready messages in ``queue``; OpsError if there is no such queue."""
    count = size(conn, queue)
    if count is None:
        raise OpsError(f"no queue {queue!r} in vhost {conn.virtual_host!r}")
    return count


def list_queue_names(management_url: str, vhost: str, timeout: float = 10) -> list[str]:
    url = f"{management_url.rstrip('/')}/api/queues/{urllib.parse.quote(vhost, safe='')}"
    try:
        response = requests.get(url, params={"columns": "name"}, timeout=timeout)
    except requests.RequestException as exc:
        raise OpsError(f"cannot reach the RabbitMQ management API at {safe_url(management_url)}: {exc}") from None
    if response.status_code == 404:
        raise OpsError(f"no vhost {vhost!r} on {safe_url(management_url)}")
    if response.status_code in (401, 403):
        raise OpsError(f"the RabbitMQ management API refused the credentials of {safe_url(management_url)}")
    if not response.ok:
        raise OpsError(f"the RabbitMQ management API answered {response.status_code}: {response.text[:200]}")
    return sorted(item["name"] for item in response.json())


def queue_message_ttl(management_url: str, vhost: str, queue: str,
                      timeout: float = 10) -> int | None:
    """The message TTL (ms) in force on ``queue`` (its policy's, else its
    argument's), or None when it has none or the management API cannot say."""
    url = (f"{management_url.rstrip('/')}/api/queues/{urllib.parse.quote(vhost, safe='')}/"
           f"{urllib.parse.quote(queue, safe='')}")
    try:
        response = requests.get(url, timeout=timeout)
        info = response.json() if response.ok else {}
    except (requests.RequestException, ValueError):
        return None
    ttl = ((info.get("effective_policy_definition") or {}).get("message-ttl")
           or (info.get("arguments") or {}).get("x-message-ttl"))
    return int(ttl) if isinstance(ttl, int | float) and ttl > 0 else None


def _management_get(management_url: str, path: str, timeout: float = 10, **params):
    url = f"{management_url.rstrip('/')}/api/{path}"
    try:
        response = requests.get(url, params=params or None, timeout=timeout)
    except requests.RequestException as exc:
        raise OpsError(f"cannot reach the RabbitMQ management API at {safe_url(management_url)}: {exc}") from None
    if not response.ok:
        raise OpsError(f"the RabbitMQ management API answered {response.status_code} for {path}: "
                       f"{response.text[:200]}")
    return response.json()


def list_queues(management_url: str, vhost: str, timeout: float = 10) -> list[dict]:
    """The queues of ``vhost``: name, type, durable, auto_delete, exclusive, consumers, arguments."""
    quoted = urllib.parse.quote(vhost, safe="")
    return _management_get(management_url, f"queues/{quoted}", timeout, columns=(
        "name,type,durable,auto_delete,exclusive,consumers,arguments"))


def queue_bindings(management_url: str, vhost: str, queue: str, timeout: float = 10) -> list[dict]:
    """The bindings of ``queue`` from named exchanges: ``{source, routing_key, arguments}``."""
    path = (f"queues/{urllib.parse.quote(vhost, safe='')}/"
            f"{urllib.parse.quote(queue, safe='')}/bindings")
    return [b for b in _management_get(management_url, path, timeout) if b.get("source")]
