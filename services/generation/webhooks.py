"""Webhooks: signing, a guard against server-side request forgery, delivery.

A job with a ``webhook_url`` gets a POST on each final state but ``rejected``
(docs/api.md). Three
concerns live here, all free of the broker so the service can call them from
a timer or a queue:

- **Signing.** Standard Webhooks (https://www.standardwebhooks.com):
  ``webhook-id`` (the delivery's id, the same on every retry),
  ``webhook-timestamp`` (unix seconds) and ``webhook-signature: v1,<base64
  HMAC-SHA256 of "id.timestamp.body">`` keyed with the bytes of the account's
  ``whsec_<base64>`` secret. Id and timestamp are inside the MAC so a captured
  delivery cannot be replayed later or as another message; :func:`verify` is
  what a receiver does (as the ``standardwebhooks`` library does).
- **The URL guard.** A user chooses the URL and our server makes the request,
  so without a guard a webhook could reach the cloud metadata endpoint, the
  broker's management API or anything else on the private network.
  :class:`UrlGuard` refuses non-http(s) URLs, URLs with credentials, and any
  host that resolves to an address that is not globally routable (loopback,
  private, link-local, CGNAT, multicast, reserved, unspecified, metadata),
  checking every address the host resolves to. An operator allow-list of
  CIDRs and host names lifts the refusal for internal receivers.
  A check before connecting is not enough on its own (DNS can answer
  differently a moment later), so :func:`guarded_session` checks the address
  each connection actually reached, too.
- **Delivery.** :func:`deliver` POSTs once, within a total deadline (DNS,
  connect, TLS, the answer's headers and body), without following
  redirects, and says whether a retry makes sense; the backoff schedule says
  when (:mod:`services.generation.deliveries` runs the attempts).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

log = logging.getLogger(__name__)

# Standard Webhooks (https://www.standardwebhooks.com): lower-case names, as the spec writes them
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
USER_AGENT = "Darkroom-Webhooks/1"
DEFAULT_TOLERANCE_S = 300
#: Seconds to wait before retry 1, 2, ...: about a day of attempts in all.
BACKOFF_SCHEDULE_S = (10, 60, 300, 1800, 7200, 21600, 43200)
MAX_URL_LENGTH = 2048
#: The total deadline of one attempt (GENERATION_WEBHOOK_TIMEOUT_SECONDS).
DEFAULT_TIMEOUT_S = 15.0
#: How much of a receiver's answer is read (the status is what counts).
MAX_ANSWER_BYTES = 64 * 1024

#: Cloud metadata endpoints. All are non-global already except on networks
#: where an operator allow-lists a range; they stay refused even then unless
#: the allow-list names the exact address.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254",
))
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "instance-data"})

Resolver = Callable[[str, int], Sequence[str]]


# ------------------------------------------------------------------ signing


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of a ``whsec_`` secret: the base64 after the prefix,
    decoded (Standard Webhooks). Bytes are the key itself. The URL-safe
    alphabet of secrets made before Standard Webhooks decodes to the same key."""
    if isinstance(secret, bytes):
        key = secret
    else:
        text = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
        text = text.strip().translate(_URLSAFE).rstrip("=")
        try:
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a webhook secret is whsec_ and base64") from None
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


_URLSAFE = str.maketrans("-_", "+/")


def _mac(key: bytes, delivery_id: str, timestamp: int, body: bytes) -> str:
    content = f"{delivery_id}.{int(timestamp)}.".encode() + body
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def sign(secret: str | bytes, delivery_id: str, body: bytes,
         timestamp: int | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for ``body``: ``webhook-id``,
    ``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64 HMAC-SHA256
    of "id.timestamp.body">``)."""
    t = int(time.time() if timestamp is None else timestamp)
    return {ID_HEADER: str(delivery_id), TIMESTAMP_HEADER: str(t),
            SIGNATURE_HEADER: "v1," + _mac(secret_key(secret), str(delivery_id), t, body)}


def verify(secret: str | bytes, headers: Mapping[str, str], body: bytes, *,
           now: float | None = None, tolerance_s: int = DEFAULT_TOLERANCE_S) -> bool:
    """What a receiver does: True when ``headers`` (any case) sign ``body``
    with ``secret`` and the timestamp is within ``tolerance_s`` of ``now``.
    Any of several space-separated ``v1,`` signatures may match (a sender may
    sign with an old and a new secret while rotating)."""
    lowered = {str(k).lower(): v for k, v in (headers or {}).items()}
    delivery_id = lowered.get(ID_HEADER)
    timestamp = str(lowered.get(TIMESTAMP_HEADER) or "")
    signatures = lowered.get(SIGNATURE_HEADER)
    if not delivery_id or not timestamp.isdigit() or not signatures:
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
        return False
    expected = _mac(secret_key(secret), delivery_id, int(timestamp), body)
    return any(hmac.compare_digest(expected.encode(), candidate[3:].encode())
               for candidate in signatures.split() if candidate.startswith("v1,"))


def encode_body(payload: dict) -> bytes:
    """The exact bytes that are signed and sent: compact JSON, sorted keys."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()


# ------------------------------------------------------------------ the URL guard


class UnsafeUrl(ValueError):
    """The URL may not be called. ``reason`` is a snake_case code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv4-mapped, 6to4 or Teredo IPv6 address carries."""
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
    return ip


def is_public_address(ip: IPAddress | str) -> bool:
    """True for a globally routable unicast address that is no metadata endpoint."""
    ip = ipaddress.ip_address(str(ip).split("%", 1)[0])
    if ip in METADATA_ADDRESSES:
        return False
    inner = _embedded_ipv4(ip)
    for candidate in {ip, inner}:
        if (not candidate.is_global or candidate.is_multicast or candidate.is_reserved
                or candidate.is_loopback or candidate.is_link_local or candidate.is_private
                or candidate.is_unspecified or candidate in METADATA_ADDRESSES):
            return False
    return True


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def allow_list(value: Iterable[str] | str | None) -> list[str]:
    """Allow-list entries from a list or a comma-separated string (an
    environment variable), blanks dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [str(entry).strip() for entry in value if str(entry).strip()]


class UrlGuard:
    """Decides which URLs the server may call.

    ``allow`` holds CIDRs or addresses (``10.0.0.0/8``, ``192.168.1.20``) and
    host names (``hooks.internal``, exact and case-insensitive) that may be
    called even though they are not public: the operator's own receivers.
    A comma-separated string works too.
    """

    def __init__(self, allow: Iterable[str] | str | None = (), resolver: Resolver | None = None,
                 schemes: Iterable[str] = ("http", "https")):
        self.networks: list[IPNetwork] = []
        self.hosts: set[str] = set()
        for entry in allow_list(allow):
            entry = str(entry).strip()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))
        self.resolver = resolver or system_resolver
        self.schemes = frozenset(schemes)

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def address_allowed(self, host: str, address: str) -> bool:
        """May a connection for ``host`` go to ``address``?"""
        if self.host_allowed(host):
            return True
        ip = ipaddress.ip_address(str(address).split("%", 1)[0])
        if any(ip in net or _embedded_ipv4(ip) in net for net in self.networks):
            return True
        return is_public_address(ip)

    def check(self, url: str) -> list[str]:
        """The addresses ``url``'s host resolves to, or :class:`UnsafeUrl`."""
        if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
            raise UnsafeUrl("invalid_url", "the URL is empty or too long")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise UnsafeUrl("invalid_url", "the URL cannot be parsed") from None
        if parts.scheme.lower() not in self.schemes:
            raise UnsafeUrl("scheme_not_allowed", "only http and https URLs are allowed")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise UnsafeUrl("credentials_in_url", "the URL may not carry credentials")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise UnsafeUrl("invalid_url", "the URL has no host")
        if host.lower() in METADATA_HOSTS and not self.host_allowed(host):
            raise UnsafeUrl("address_not_allowed", "the URL points at a metadata service")
        port = port or (443 if parts.scheme.lower() == "https" else 80)
        try:
            addresses = list(self.resolver(host, port))
        except (OSError, UnicodeError):
            raise UnsafeUrl("unresolvable_host", "the URL's host does not resolve") from None
        if not addresses:
            raise UnsafeUrl("unresolvable_host", "the URL's host does not resolve")
        for address in addresses:
            if not self.address_allowed(host, address):
                raise UnsafeUrl("address_not_allowed",
                                "the URL's host resolves to a private or reserved address")
        return addresses


def receiver_of(url: str) -> str | None:
    """The receiver a URL names, for per-receiver limits and backoff: its
    origin, ``scheme://host:port`` (lower case, default port filled in)."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
    except (ValueError, AttributeError):
        return None
    host = (parts.hostname or "").rstrip(".").lower()
    return f"{scheme}://{host}:{port}"[:300] if host else None


# ------------------------------------------------------------------ guarded connections


def _check_peer(guard: UrlGuard, host: str, sock: socket.socket) -> None:
    address = sock.getpeername()[0]
    if not guard.address_allowed(host, address):
        sock.close()
        raise UnsafeUrl("address_not_allowed",
                        "the connection reached a private or reserved address")


def _pool_classes(guard: UrlGuard) -> dict[str, type]:
    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self):
            sock = super()._new_conn()
            _check_peer(guard, self.host, sock)
            return sock

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self):
            sock = super()._new_conn()
            _check_peer(guard, self.host, sock)
            return sock

    class GuardedHTTPPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, guard: UrlGuard, **kwargs):
        self._guard = guard
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self._guard)


def guarded_session(guard: UrlGuard) -> requests.Session:
    """A requests session whose every connection is checked against ``guard``
    after it connects (which defeats DNS rebinding between check and use).
    Proxies from the environment are ignored: the peer must be the target."""
    session = requests.Session()
    session.trust_env = False
    adapter = _GuardedAdapter(guard)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# ------------------------------------------------------------------ delivery


@dataclass(frozen=True)
class Delivery:
    """What one attempt did: ``delivered`` on a 2xx; otherwise ``retry`` says
    whether another attempt may succeed and ``error`` says why it failed."""

    delivered: bool
    retry: bool
    status: int | None = None
    error: str | None = None


def next_delay(attempts_made: int, schedule: Sequence[float] = BACKOFF_SCHEDULE_S) -> float | None:
    """Seconds to wait before the next attempt after ``attempts_made`` failed
    ones, or None when the schedule is exhausted (give up)."""
    if attempts_made < 1:
        return 0.0
    if attempts_made > len(schedule):
        return None
    return float(schedule[attempts_made - 1])


def _classify(status: int) -> Delivery:
    if 200 <= status < 300:
        return Delivery(True, False, status)
    if status in (408, 425, 429) or status >= 500:
        return Delivery(False, True, status, "receiver_error")
    if 300 <= status < 400:  # redirects are never followed: a misconfigured URL
        return Delivery(False, False, status, "redirect_not_followed")
    return Delivery(False, False, status, "receiver_refused")


class DeadlineExceeded(BaseException):
    """A delivery's total deadline passed. A BaseException (like
    ``eventlet.Timeout``) so no ``except Exception`` on the way swallows it."""


@contextmanager
def total_deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`DeadlineExceeded` in this (green) thread once ``seconds``
    have passed, wherever it is: resolving the host, connecting, the TLS
    handshake, waiting for or reading the answer. Under ``nameko run``
    (sockets green) it is an ``eventlet.Timeout``; elsewhere (plain scripts,
    tests that call :func:`deliver` directly) nothing can interrupt a
    blocking call, and :func:`deliver` falls back to per-call timeouts capped
    at the time left and a check between reads of the answer."""
    from eventlet import patcher

    if not patcher.is_monkey_patched("socket"):
        yield
        return
    import eventlet

    timer = eventlet.Timeout(seconds, DeadlineExceeded)
    try:
        yield
    finally:
        timer.cancel()


def _read_answer(response, deadline: float) -> None:
    """Read up to :data:`MAX_ANSWER_BYTES` of the answer, as it comes, within
    the deadline (a receiver that drips its answer is cut at the deadline)."""
    read = 0
    while read < MAX_ANSWER_BYTES:
        if time.monotonic() >= deadline:
            raise DeadlineExceeded
        chunk = response.raw.read1(min(8192, MAX_ANSWER_BYTES - read))
        if not chunk:
            return
        read += len(chunk)


def deliver(url: str, body: bytes, secret: str | bytes, *, guard: UrlGuard,
            timeout_s: float = DEFAULT_TIMEOUT_S, delivery_id: str | None = None,
            now: float | None = None, session: requests.Session | None = None) -> Delivery:
    """POST ``body`` to ``url`` once, signed (Standard Webhooks), and say what
    happened.

    ``timeout_s`` is the total deadline of the attempt: resolving, connecting,
    TLS, sending, the status line, the headers and the answer's body (at most
    64 KiB of it is read) all fit in it, or the attempt is a ``timeout``.
    The URL is checked (and, through the guarded session, every connection).
    Retry on timeouts, connection failures, unresolvable hosts, 408/425/429
    and 5xx; not on a refused URL, a redirect or another 4xx.
    """
    deadline = time.monotonic() + timeout_s
    delivery_id = str(delivery_id or uuid.uuid4())
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               **sign(secret, delivery_id, body, int(time.time() if now is None else now))}
    own = session is None
    session = session or guarded_session(guard)
    try:
        with total_deadline(timeout_s):
            try:
                guard.check(url)
            except UnsafeUrl as exc:
                return Delivery(False, exc.reason == "unresolvable_host", None, exc.reason)
            left = max(0.001, deadline - time.monotonic())
            response = session.post(url, data=body, headers=headers, timeout=(left, left),
                                    allow_redirects=False, stream=True)
            try:
                _read_answer(response, deadline)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
                pass  # the status is what counts; a broken body does not
            finally:
                response.close()
            return _classify(response.status_code)
    except DeadlineExceeded:
        return Delivery(False, True, None, "timeout")
    except UnsafeUrl as exc:
        return Delivery(False, False, None, exc.reason)
    except requests.Timeout:
        return Delivery(False, True, None, "timeout")
    except requests.RequestException as exc:
        log.info("webhook delivery failed: %s", type(exc).__name__)
        return Delivery(False, True, None, "connection_failed")
    finally:
        if own:
            session.close()
