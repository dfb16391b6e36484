"""Who is calling: credentials resolved by the auth service, briefly cached.

``Authorization: Bearer <session token or API key>`` or ``X-API-Key: <key>``
(or both, when they belong to the same account) is resolved with
``auth.authenticate`` into a :class:`Principal`. A bearer value goes to auth
as a ``token`` whatever it is: auth tells an API key from a session token
(``services.auth.tokens.is_api_key``), so OpenAI-style clients that send their
key as a bearer token work, and the gateway knows nothing of the formats.
Principals are cached in this process
under the sha256 of the credential for ``AUTH_CACHE_SECONDS`` (at most 30), so
a revoked credential stops working within that time everywhere and at once in
the process that revoked it. Failures are not cached.

Views use :func:`authenticated` (401 without a valid credential) and, where a
verified address is needed, :func:`require_verified` (403
``email_unverified``). Business rules live in the services, not here.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps

from flask import current_app, g, request
from flask_smorest import Blueprint

from services.common.errors import admin_required, email_unverified, unauthenticated

MAX_CACHE_SECONDS = 30.0
CREDENTIAL_MAX = 200
SECURITY = [{"bearerAuth": []}, {"apiKeyAuth": []}]


@dataclass(frozen=True)
class Principal:
    user_id: str
    email_verified: bool
    is_admin: bool
    processing_restricted: bool
    plan: str
    credential_type: str  # "session" | "api_key"
    credential_id: str

    @classmethod
    def from_rpc(cls, data: dict) -> Principal:
        return cls(
            user_id=str(data["user_id"]),
            email_verified=bool(data["email_verified"]),
            is_admin=bool(data.get("is_admin", False)),
            processing_restricted=bool(data.get("processing_restricted", False)),
            plan=str(data.get("plan") or ""),
            credential_type=str(data["credential_type"]),
            credential_id=str(data["credential_id"]),
        )


class AuthCache:
    """Thread-safe TTL cache of resolved credentials, keyed by their sha256."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 10_000):
        self.ttl = max(0.0, min(float(ttl), MAX_CACHE_SECONDS))
        self.clock = clock
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(kind: str, credential: str) -> str:
        return hashlib.sha256(f"{kind}:{credential}".encode()).hexdigest()

    def get(self, key: str) -> Principal | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, principal = entry
            if self.clock() >= expires:
                del self._entries[key]
                return None
            return principal

    def put(self, key: str, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        now = self.clock()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                while len(self._entries) >= self.max_entries:  # still full: drop the oldest
                    self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (now + self.ttl, principal)

    def evict(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def evict_credential(self, credential_id: str) -> None:
        """Forget every entry of a revoked session or API key."""
        with self._lock:
            for key in [k for k, (_, p) in self._entries.items() if p.credential_id == credential_id]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


def request_credentials() -> list[tuple[str, str]]:
    """The request's credentials, ("token" | "api_key", value) each: the bearer
    token first. Both may be sent (the OpenAPI document's security alternatives
    allow it); :func:`current_principal` then requires that they agree."""
    header = request.headers.get("Authorization")
    api_key = request.headers.get("X-API-Key")
    credentials = []
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthenticated("the Authorization header must be 'Bearer <token>'")
        credentials.append(("token", token))
    if api_key is not None:
        credentials.append(("api_key", api_key.strip()))
    return credentials


def resolve(kind: str, credential: str) -> Principal:
    if not credential or len(credential) > CREDENTIAL_MAX or not credential.isprintable():
        raise unauthenticated("invalid credential")
    state = current_app.extensions["darkroom"]
    cache: AuthCache = state.auth_cache
    key = AuthCache.key(kind, credential)
    principal = cache.get(key)
    if principal is None:
        with state.rpc.get() as rpc:
            principal = Principal.from_rpc(rpc.auth.authenticate({kind: credential}))
        cache.put(key, principal)
    return principal


def current_principal() -> Principal:
    """The caller of this request (401 when there is none)."""
    principal = g.get("principal")
    if principal is not None:
        return principal
    credentials = request_credentials()
    if not credentials:
        raise unauthenticated()
    principals = [resolve(*credential) for credential in credentials]
    if any(other.user_id != principals[0].user_id for other in principals[1:]):
        raise unauthenticated("the bearer token and the API key belong to different accounts")
    principal = principals[0]  # with both, the session: logout revokes it
    g.principal = principal
    g.credential_key = AuthCache.key(*credentials[0])
    return principal


def _with_security_doc(wrapper, **responses):
    return Blueprint.doc(security=SECURITY, responses=responses)(wrapper)


def authenticated(fn):
    """View decorator: resolve the caller or answer 401 ``unauthenticated``."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        current_principal()
        return fn(*args, **kwargs)

    return _with_security_doc(wrapper)


def require_verified(fn):
    """View decorator: like :func:`authenticated`, and the account's email
    address must be verified (403 ``email_unverified``). An early answer from
    the resolved credential: the services that spend enforce the rule
    themselves (services.common.spending)."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        if not current_principal().email_verified:
            raise email_unverified()
        return fn(*args, **kwargs)

    return _with_security_doc(wrapper, **{"403": "FORBIDDEN"})


def require_operator(fn):
    """View decorator: like :func:`authenticated`, and the caller must be an
    administrator signed in with a session (not an API key): 403
    ``admin_required``. An early answer: every service's ``admin_*`` RPC checks
    the actor again with auth (services/common/operators.py)."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        principal = current_principal()
        if not principal.is_admin or principal.credential_type != "session":
            raise admin_required()
        return fn(*args, **kwargs)

    return _with_security_doc(wrapper, **{"403": "FORBIDDEN"})
