"""What a job's error may say: the one home for cleaning failure text.

A job's error message is shown to its user (``GET /v1/generations/<id>``),
sent in its webhook, carried by ``generation.job_failed`` and written to the
logs. Failure text comes from places that know too much: requests and urllib3
put the whole URL in their messages (a presigned storage URL is a credential:
its query string signs it), a provider's error body may echo the request, a
key or a result URL, minio names the object key, and every one of them names
hosts on the service network. :func:`clean` keeps the kind of failure, the
peer's host (when it is a public name) and the status, and removes:

- URLs' user info, paths, query strings and fragments (``https://host[:port]``
  is what is left of a URL), request paths (urllib3's ``with url: /...``) and
  minio's resource, key and request ids;
- credentials: ``Bearer``/``Basic`` values, ``key=value`` pairs whose key
  names a secret (``api_key``, ``token``, ``password``, ``X-Amz-Signature``,
  ``Signature``...), tokens with a known prefix (``sk-``, ``sk_live_``,
  ``whsec_``, ``drk_``, ``drs_``, ``AKIA``, JWTs...) and any other long opaque
  token (32+ characters mixing letters and digits; UUIDs are kept);
- internal host names and addresses: non-public IP addresses, single-label
  names (``minio``, ``storage``, ``localhost``) and names under internal
  suffixes (``.internal``, ``.local``, ``.svc``, ``.lan``...), which become
  ``[internal]``.

:func:`clean` is idempotent (cleaning a cleaned text changes nothing) and
caps the text at :data:`MAX_LENGTH` characters. :func:`peer` and
:func:`describe_http_failure` build messages that say only what they should
in the first place.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

import requests

from services.generation.webhooks import is_public_address

MAX_LENGTH = 500
INTERNAL = "[internal]"
REDACTED = "[redacted]"
PATH = "[path]"

INTERNAL_SUFFIXES = (".internal", ".local", ".localhost", ".localdomain", ".lan", ".home",
                     ".corp", ".intranet", ".private", ".svc", ".home.arpa")

_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{1,15})://([^\s/?#'\"<>]*)([^\s'\"<>)]*)")
_URLLIB3_HOST = re.compile(r"(?i)\bhost=(['\"])([^'\"]*)\1")
_URL_PATH = re.compile(r"(?i)(\burl:\s*)/[^\s'\"<>)]*")
_QUERY_PATH = re.compile(r"(?<![\w/.\]])/[^\s'\"<>)]*\?[^\s'\"<>)]*")
_S3_FIELDS = re.compile(
    r"(?i)\b(resource|object_name|bucket_name|request_id|host_id|key)(:\s*)(?!\[)[^\s,;)]+")
_RESOLVE = re.compile(r"(?i)(\bresolve\s+)(['\"])([^'\"]+)\2")
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)(?!\[redacted\])[^\s,;'\")]+")
_SECRET_PAIR = re.compile(
    r"(?i)\b((?:x-amz-|x-goog-)?(?:api[_-]?key|apikey|access[_-]?key(?:[_-]?id)?|"
    r"secret(?:[_-]?(?:access[_-]?)?key)?|client[_-]?secret|password|passwd|pwd|"
    r"(?:access[_-]?|refresh[_-]?|session[_-]?|security[_-]?|id[_-]?)?token|authorization|"
    r"signature|credential|sig|private[_-]?key))"
    r"([\"']?\s*[:=]\s*[\"']?)(?!\[redacted\])([^\s\"'&,;)}\]]+)")
_PREFIXED_TOKEN = re.compile(
    r"(?<![\w-])(?:(?:sk|pk|rk)-[A-Za-z0-9_-]{8,}|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}|"
    r"(?:whsec|drk|drs|hf|r8|gh[pousr])_[A-Za-z0-9_-]{8,}|xox[abprs]-[A-Za-z0-9-]{10,}|"
    r"(?:AKIA|ASIA)[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*)")
_OPAQUE = re.compile(r"(?<![\w-])[A-Za-z0-9_-]{32,}={0,2}(?![\w-])")
_UUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_HOST_PORT = re.compile(
    r"(?<![\w.@/\[-])((?:[A-Za-z][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)*)|\d{1,3}(?:\.\d{1,3}){3}):"
    r"(\d{2,5})\b")
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.])")
_SUFFIXED_NAME = re.compile(
    r"(?i)(?<![\w.-])[a-z0-9-]+(?:\.[a-z0-9-]+)*(?:" +
    "|".join(re.escape(s) for s in INTERNAL_SUFFIXES) + r")(?![\w.-])")
_LOCALHOST = re.compile(r"(?i)(?<![\w.-])localhost(?![\w.-])")
_OBJECT_REPR = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")
_SPACES = re.compile(r"\s+")


def is_internal_host(host: str) -> bool:
    """A host on the service network (or one we cannot tell): a non-public
    address, a single-label name, a name under an internal suffix."""
    host = (host or "").strip().strip("[]").rstrip(".").lower()
    if not host:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return "." not in host or host.endswith(INTERNAL_SUFFIXES)
    return not is_public_address(address)


def peer(url: str | None) -> str:
    """What a message may say of where a URL points: ``host[:port]`` for a
    public host, :data:`INTERNAL` otherwise."""
    try:
        parts = urlsplit(url or "")
        host, port = parts.hostname, parts.port
    except ValueError:
        return INTERNAL
    if not host or is_internal_host(host):
        return INTERNAL
    return f"{host}:{port}" if port else host


def _url(match: re.Match) -> str:
    scheme, netloc = match.group(1).lower(), match.group(2)
    if netloc.rpartition("@")[2] == INTERNAL:
        return f"{scheme}://{INTERNAL}"
    return f"{scheme}://{peer(f'{scheme}://{netloc}')}"


def _host(match: re.Match) -> str:
    return match.group(0) if not is_internal_host(match.group(2)) else \
        f"host={match.group(1)}{INTERNAL}{match.group(1)}"


def _host_port(match: re.Match) -> str:
    return INTERNAL if is_internal_host(match.group(1)) else match.group(0)


def _ipv4(match: re.Match) -> str:
    try:
        return INTERNAL if is_internal_host(match.group(0)) else match.group(0)
    except ValueError:
        return match.group(0)


def _opaque(match: re.Match) -> str:
    token = match.group(0)
    if _UUID.fullmatch(token) or not (re.search(r"\d", token) and re.search(r"[A-Za-z]", token)):
        return token
    return REDACTED


def clean(text: object, limit: int = MAX_LENGTH) -> str:
    """``text`` without signed URLs, credentials or internal host names (see
    the module's docstring), whitespace collapsed, at most ``limit`` characters."""
    text = str(text or "")
    text = _URL.sub(_url, text)
    text = _URLLIB3_HOST.sub(_host, text)
    text = _URL_PATH.sub(lambda m: m.group(1) + PATH, text)
    text = _QUERY_PATH.sub(PATH, text)
    text = _S3_FIELDS.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _RESOLVE.sub(lambda m: m.group(1) + m.group(2) + (
        INTERNAL if is_internal_host(m.group(3)) else m.group(3)) + m.group(2), text)
    text = _AUTH_SCHEME.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _SECRET_PAIR.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _PREFIXED_TOKEN.sub(REDACTED, text)
    text = _OPAQUE.sub(_opaque, text)
    text = _HOST_PORT.sub(_host_port, text)
    text = _IPV4.sub(_ipv4, text)
    text = _SUFFIXED_NAME.sub(INTERNAL, text)
    text = _LOCALHOST.sub(INTERNAL, text)
    text = _OBJECT_REPR.sub(r"<\1>", text)
    text = _SPACES.sub(" ", text).strip()
    if len(text) > limit:
        text = text[:limit - 1].rstrip() + "…"
    return text


def describe_http_failure(exc: requests.RequestException) -> str:
    """A failed HTTP exchange with storage or the object store, as a job's
    error tells it: the kind of failure, the peer and the status."""
    request = getattr(exc, "request", None)
    response = getattr(exc, "response", None)
    where = peer(getattr(request, "url", None) or getattr(response, "url", None))
    if response is not None and response.status_code >= 400:
        return f"{where} answered {response.status_code}"
    if isinstance(exc, requests.Timeout):
        return f"{where} did not answer in time"
    if isinstance(exc, requests.ConnectionError):
        refused = "refused" in str(exc).lower()
        return f"{where} {'refused the connection' if refused else 'could not be reached'}"
    return f"{where}: {type(exc).__name__}"
