"""HTTP plumbing shared by the network adapters: one place that turns
timeouts, connection failures and status codes into provider errors, and that
downloads results safely.

Safety of downloads: a provider answers with a result URL, and a compromised
or buggy provider could point it at an internal address. Every connection
goes through :func:`services.generation.webhooks.guarded_session`, which
allows public addresses only, plus the provider's ``result_url_allow``
entries. A provider whose API sits on a private network (a self-hosted
engine; loopback fakes in tests) says so with ``allow_private_network: true``
in its config: then its API and result URLs may reach loopback and the
private ranges (:data:`PRIVATE_NETWORKS`; link-local, where cloud metadata
lives, never).
Without the flag a private base_url is refused at the first call (transient
``invalid_provider_output``, like any unsafe URL): the operator's host is
not allowed implicitly. The API key is sent only to the
provider's own origin, never to a CDN it redirects to. Sizes are capped
(``max_download_bytes``) while the result streams to a temporary file.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

import requests

from services.common.config import flag
from services.generation.error_text import INTERNAL, peer
from services.generation.providers.base import (
    CONTENT_REFUSED,
    Body,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
)
from services.generation.providers.common import conf_number, conf_str
from services.generation.webhooks import (
    METADATA_ADDRESSES,
    UnsafeUrl,
    UrlGuard,
    allow_list,
    guarded_session,
)

MAX_REDIRECTS = 3
DOWNLOAD_CHUNK = 256 * 1024
#: What ``allow_private_network`` opens: loopback and the private ranges (RFC 1918,
#: carrier-grade NAT, IPv6 unique-local), less the cloud metadata addresses. Never
#: link-local (169.254.0.0/16, the metadata service) nor unspecified/multicast.
PRIVATE_NETWORKS = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                    "100.64.0.0/10", "::1/128", "fc00::/7")


def _private_networks() -> tuple[str, ...]:
    networks = [ipaddress.ip_network(n) for n in PRIVATE_NETWORKS]
    for address in METADATA_ADDRESSES:
        metadata = ipaddress.ip_network(address)
        networks = [part for net in networks
                    for part in (net.address_exclude(metadata)
                                 if net.version == metadata.version and metadata.subnet_of(net)
                                 else [net])]
    return tuple(str(net) for net in networks)


_PRIVATE = _private_networks()
REFUSAL_HINTS = ("content_policy", "content_filter", "moderation", "safety", "nsfw", "refus")
_ERROR_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_text(response: requests.Response) -> str:
    """The provider's error message and code, shortened: only to recognise a
    content refusal, never passed on (it may echo a key, a URL, the prompt)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{error.get('code') or error.get('type') or ''}: {error.get('message') or ''}"[:300]
    if isinstance(error, str):
        return error[:300]
    return json.dumps(body)[:300]


def error_code(value) -> str | None:
    """A provider's own error code when it is one (a short machine token such
    as ``content_policy_violation``): the one part of an error body that an
    error message repeats."""
    value = str(value or "")
    return value if _ERROR_CODE.fullmatch(value) else None


def _body_code(response: requests.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return error_code(error.get("code")) or error_code(error.get("type"))
    return None


#: A vendor's own reading of an error answer, consulted before the generic
#: mapping: ``(status, the vendor's error code, "<provider> answered <status>
#: (<code>)", the response)`` -> the error to raise, or None for the generic
#: mapping (e.g. Ark's content-refusal codes, OpenRouter's 403 moderation
#: refusal, Google's retry hint in the body).
ErrorMapper = Callable[[int, str | None, str, requests.Response], ProviderError | None]


def error_body(response: requests.Response) -> dict:
    """The ``error`` object of a JSON error answer, or ``{}``."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):  # not JSON, or not an object
        return {}
    return error if isinstance(error, dict) else {}


def raise_for_status(response: requests.Response, provider: str,
                     errors: ErrorMapper | None = None) -> None:
    """Map a non-2xx answer onto the provider error taxonomy. The message
    says who answered (``provider``), the status and the provider's error
    code, nothing of the body. ``errors`` reads the vendor's codes first."""
    status = response.status_code
    if 200 <= status < 300:
        return
    text = _error_text(response)
    code = _body_code(response)
    where = f"{provider} answered {status}" + (f" ({code})" if code else "")
    mapped = errors(status, code, where, response) if errors is not None else None
    if mapped is not None:
        raise mapped
    if status == 429:
        raise TransientProviderError("provider_rate_limited", where, status=status,
                                     retry_after=_retry_after(response))
    if status == 408:
        raise TransientProviderError("provider_timeout", where, status=status)
    if status >= 500:
        raise TransientProviderError("provider_server_error", where, status=status,
                                     retry_after=_retry_after(response))
    if status in (401, 403):
        raise PermanentProviderError("provider_auth_failed", where, status=status)
    if 400 <= status < 500:
        if any(hint in text.lower() for hint in REFUSAL_HINTS):
            raise PermanentProviderError(CONTENT_REFUSED, where, status=status)
        raise PermanentProviderError("provider_rejected_request", where, status=status)
    raise TransientProviderError("invalid_provider_output", f"{where} (unexpected)", status=status)


class ProviderHttp:
    """A provider's base URL, credentials, timeout and guarded session."""

    def __init__(self, provider: str, base_url: str, api_key: str | None = None,
                 timeout_s: float = 60.0, max_download_bytes: int = 200 * 1024 * 1024,
                 result_url_allow: tuple[str, ...] | str = (), resolver=None, *,
                 allow_private_network: bool = False, auth_header: str = "Authorization",
                 auth_scheme: str | None = "Bearer", errors: ErrorMapper | None = None):
        """``auth_header``/``auth_scheme``: how the vendor takes its key
        (``Authorization: Bearer <key>`` unless it documents another, e.g.
        ``Authorization: Key <key>`` or ``x-goog-api-key: <key>`` with no scheme).
        ``allow_private_network``: the provider's API and result URLs may be on
        private addresses (a self-hosted engine; loopback in tests).
        ``errors``: the vendor's own error codes (see :data:`ErrorMapper`)."""
        if not base_url or urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError(f"provider {provider}: base_url must be an http(s) URL")
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key or None
        self.timeout_s = float(timeout_s)
        self.max_download_bytes = int(max_download_bytes)
        self.errors = errors
        # how errors name the provider: its name, and its host when that is public
        where = peer(self.base_url)
        self.who = provider if where == INTERNAL else f"{provider} ({where})"
        self.auth_header, self.auth_scheme = auth_header, auth_scheme
        private = list(_PRIVATE) if allow_private_network else []
        self.guard = UrlGuard(allow=[*allow_list(result_url_allow), *private],
                              resolver=resolver)
        self.session = guarded_session(self.guard)

    @classmethod
    def from_config(cls, name: str, conf: dict, default_base_url: str, *,
                    default_timeout_s: float = 120.0, **kwargs) -> ProviderHttp:
        """From a providers-file entry: ``base_url`` (``default_base_url``),
        ``api_key`` (required), ``timeout_s``, ``max_download_bytes``,
        ``result_url_allow``, ``allow_private_network``; ``kwargs`` as above."""
        return cls(name, str(conf.get("base_url") or default_base_url),
                   conf_str(conf, "api_key"), conf_number(conf, "timeout_s", default_timeout_s),
                   int(conf_number(conf, "max_download_bytes", 200 * 1024 * 1024, minimum=1,
                                   whole=True)),
                   conf.get("result_url_allow") or (),
                   allow_private_network=flag(conf.get("allow_private_network", False)),
                   **kwargs)

    def close(self) -> None:
        self.session.close()

    def _auth_headers(self, url: str) -> dict:
        if self.api_key and _origin(url) == _origin(self.base_url):
            value = f"{self.auth_scheme} {self.api_key}" if self.auth_scheme else self.api_key
            return {self.auth_header: value}
        return {}

    def send(self, method: str, url: str, **kwargs) -> requests.Response:
        """One request to ``url`` (an absolute URL), through the guard, with the
        key when it is the provider's own origin, no redirects followed; the
        answer whatever its status (see :meth:`answer`). ``kwargs`` as for
        ``requests`` (``json``, ``files``, ``data``, ``headers``, ``stream``).
        Timeouts and connection failures raise transient provider errors."""
        headers = {**kwargs.pop("headers", {}), **self._auth_headers(url)}
        try:
            return self.session.request(method, url, headers=headers, timeout=self.timeout_s,
                                        allow_redirects=False, **kwargs)
        except UnsafeUrl as exc:
            raise TransientProviderError(
                "invalid_provider_output", f"{self.provider}: {exc.message}") from None
        except requests.Timeout:
            raise TransientProviderError(
                "provider_timeout", f"{self.who} did not answer within {self.timeout_s:g}s"
            ) from None
        except requests.ConnectionError:
            raise TransientProviderError(
                "provider_connection_failed", f"cannot connect to {self.who}") from None
        except requests.RequestException as exc:
            raise TransientProviderError(
                "provider_connection_failed", f"{self.provider}: {type(exc).__name__}") from None

    def call(self, method: str, path: str, payload: dict | None = None, *,
             headers: dict | None = None) -> dict:
        """A JSON API call on the provider's base URL; the answer as a dict.
        ``headers``: the vendor's own request headers (never the key: see above)."""
        return self.answer(self.send(method, f"{self.base_url}{path}", json=payload,
                                     headers=headers or {}))

    def answer(self, response: requests.Response) -> dict:
        """A JSON object answer of :meth:`send`, its status checked (closed after)."""
        with response:
            raise_for_status(response, self.who, self.errors)
            try:
                body = response.json()
            except ValueError:
                raise TransientProviderError(
                    "invalid_provider_output", f"{self.provider} answered with invalid JSON"
                ) from None
        if not isinstance(body, dict):
            raise TransientProviderError("invalid_provider_output",
                                         f"{self.provider} answered with a non-object")
        return body

    def download(self, url: str) -> tuple[Body, str]:
        """``(body, content type)`` of a result URL (relative ones are resolved
        against the base URL), following at most three redirects, each one
        checked by the guard. The bytes are streamed into a :class:`Body` (a
        temporary file past a megabyte), never held whole in memory."""
        url = urljoin(self.base_url + "/", url)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                self.guard.check(url)
            except UnsafeUrl as exc:
                raise TransientProviderError(
                    "invalid_provider_output", f"{self.provider} result URL: {exc.message}"
                ) from None
            response = self.send("GET", url, stream=True)
            with response:
                if response.is_redirect and response.headers.get("Location"):
                    url = urljoin(url, response.headers["Location"])
                    continue
                raise_for_status(response, self.who, self.errors)
                return self._stream_capped(response), response.headers.get("Content-Type", "")
        raise TransientProviderError("invalid_provider_output",
                                     f"{self.provider} result URL redirects too often")

    def _stream_capped(self, response: requests.Response) -> Body:
        """The answer's body, written chunk by chunk, within ``max_download_bytes``:
        a declared ``Content-Length`` over it is refused before reading, and the
        running total is checked as the bytes arrive (a missing or false length,
        a compressed body). On any failure the partial body is deleted."""
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_download_bytes:
            raise self._too_large()
        body = Body()
        try:
            for chunk in response.iter_content(DOWNLOAD_CHUNK):
                if body.size + len(chunk) > self.max_download_bytes:
                    raise self._too_large()
                body.write(chunk)
        except requests.RequestException:
            body.close()
            raise TransientProviderError(
                "provider_connection_failed", f"{self.provider} result download broke off"
            ) from None
        except BaseException:
            body.close()
            raise
        return body

    def _too_large(self) -> TransientProviderError:
        return TransientProviderError(
            "invalid_provider_output",
            f"{self.provider} result is too large (over {self.max_download_bytes} bytes)")
