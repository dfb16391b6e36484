"""Sign-in with OpenID Connect providers (Google, a company's provider...).

The authorization-code flow with PKCE, state and nonce, through Authlib:

1. :func:`start` keeps the flow server side (``oidc_flows``: the state as
   SHA-256, the nonce, the PKCE verifier, where to send the app back, the
   account asking to link) and answers the provider's authorization URL.
2. The provider sends the browser back to the gateway's callback:
   :func:`take_flow` finds the flow by its state and deletes it (one use;
   the caller commits at once), then :func:`finish` trades the code for
   tokens, validates the ID token (signature from the provider's JWKS,
   ``iss``, ``aud``, ``exp``, ``nonce``) and decides who signs in; the app
   is sent back with a one-time code (``oidc_codes``, short-lived) or an
   ``error`` code (:func:`app_url`).
3. :func:`exchange` trades that code for a session, like a login. A new
   subject's account is made only there, after the age gate
   (services/auth/age.py).

Who signs in: the account the subject is linked to; else, when the account
asking to link started the flow, that one; else the account with the same
address, linked automatically only when both its address and the ID token's
``email_verified`` are verified (409 ``link_required`` otherwise: sign in
with the password and link from /v1/me/identities); else a new account,
verified only when the ID token says ``email_verified``.

Discovery documents and key sets are cached per process for
:data:`CACHE_SECONDS`; a key set is fetched again once when a token names a
key it lacks (the provider rotated its keys).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime
from urllib.parse import urlencode, urlsplit

import requests

# authlib and joserfc are imported inside the functions of a sign-in: not
# resident in an auth service that has run none (issue 15)
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.auth import age, passwords, sessions, verification
from services.auth.errors import RecordedFailure, account_disabled, email_taken
from services.auth.lookup import find_user_by_email, other_ways_to_sign_in
from services.auth.models import Identity, OidcCode, OidcFlow, User
from services.auth.settings import AuthSettings, OidcProvider
from services.auth.tokens import sha256_hex
from services.common.contracts.auth import EMAIL_MAX, normalise_email
from services.common.db import locked
from services.common.errors import DomainError, conflict, forbidden, invalid_request, not_found
from services.common.ids import client_id, new_id

CACHE_SECONDS = 3600
# Signatures made with the provider's published (public) keys only: never
# "none", nor a shared-secret HMAC, whatever its discovery document lists.
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                      "ES512", "EdDSA")
LEEWAY_SECONDS = 60  # clock skew allowed on exp/iat


# ---------------------------------------------------------------- errors


def provider_unavailable(name: str) -> DomainError:
    return DomainError("oidc_provider_unavailable",
                       f"the sign-in provider {name} did not answer; try again later", 503,
                       {"provider": name})


def invalid_state() -> DomainError:
    return DomainError("oidc_invalid_state", "this sign-in is not known or has expired; "
                       "start again", 400)


def invalid_id_token(why: str) -> DomainError:
    return DomainError("oidc_invalid_token", f"the provider's ID token was refused: {why}", 400)


def link_required() -> DomainError:
    return conflict("an account with this address exists: sign in with its password, then "
                    "link the provider from your account", code="link_required")


def identity_taken() -> DomainError:
    return conflict("this provider account is linked to another account", code="identity_taken")


# ---------------------------------------------------------------- discovery and keys

_cache: dict[str, tuple[float, dict]] = {}
_cache_lock = threading.Lock()


def _get_json(provider: OidcProvider, url: str, timeout: float, force: bool = False) -> dict:
    with _cache_lock:
        cached = _cache.get(url)
    if cached is not None and not force and time.monotonic() - cached[0] < CACHE_SECONDS:
        return cached[1]
    try:
        response = requests.get(url, timeout=timeout, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError):
        raise provider_unavailable(provider.name) from None
    if not isinstance(document, dict):
        raise provider_unavailable(provider.name)
    with _cache_lock:
        _cache[url] = (time.monotonic(), document)
    return document


def metadata(provider: OidcProvider, timeout: float) -> dict:
    """The provider's discovery document (its ``issuer`` must be the one configured)."""
    document = _get_json(provider, provider.issuer + "/.well-known/openid-configuration", timeout)
    if str(document.get("issuer") or "").rstrip("/") != provider.issuer or not all(
            isinstance(document.get(k), str) for k in
            ("authorization_endpoint", "token_endpoint", "jwks_uri")):
        raise provider_unavailable(provider.name)
    return document


def forget_cache() -> None:
    with _cache_lock:
        _cache.clear()


# ---------------------------------------------------------------- the flow


def provider(settings: AuthSettings, name: str) -> OidcProvider:
    found = settings.oidc_providers.get(name) if isinstance(name, str) else None
    if found is None:
        raise not_found("sign-in provider")
    return found


def callback_url(settings: AuthSettings, name: str) -> str:
    return f"{settings.public_base_url}/v1/auth/oidc/{name}/callback"


def check_redirect_uri(settings: AuthSettings, redirect_uri: str) -> str:
    """``redirect_uri`` when it is on the allow-list: the same scheme, host and
    port as one of ``AUTH_OIDC_REDIRECT_URIS`` (APP_BASE_URL by default) and a
    path under that base's; 400 ``redirect_uri_not_allowed`` otherwise."""
    target = urlsplit(redirect_uri)
    for base in settings.oidc_redirect_bases:
        allowed = urlsplit(base)
        path = allowed.path.rstrip("/")
        if (target.scheme, target.netloc) == (allowed.scheme, allowed.netloc) and \
                not target.fragment and (target.path == path or
                                         target.path.startswith(path + "/") or not path):
            return redirect_uri
    raise DomainError("redirect_uri_not_allowed", "redirect_uri is not on the allow-list", 400,
                      {"fields": {"redirect_uri": ["Not an allowed redirect URI."]}})


def _client(settings: AuthSettings, found: OidcProvider, document: dict):
    """Authlib's client; the token endpoint authenticated as the provider's
    discovery allows (``client_secret_basic``, the default, else ``_post``)."""
    from authlib.integrations.requests_client import OAuth2Session

    methods = document.get("token_endpoint_auth_methods_supported")
    method = "client_secret_basic"
    if isinstance(methods, list) and method not in methods and "client_secret_post" in methods:
        method = "client_secret_post"
    return OAuth2Session(found.client_id, found.client_secret, scope=found.scopes,
                         redirect_uri=callback_url(settings, found.name),
                         code_challenge_method="S256", token_endpoint_auth_method=method)


def issuers(found: OidcProvider) -> list[str]:
    """The ``iss`` values an ID token of ``found`` may carry: its issuer (with
    or without a trailing slash); Google documents ``accounts.google.com``
    without the scheme as well."""
    values = [found.issuer, found.issuer + "/"]
    if found.issuer == "https://accounts.google.com":
        values.append("accounts.google.com")
    return values


def start(db: Session, settings: AuthSettings, name: str, redirect_uri: str,
          user_id, now: datetime) -> str:
    """Keep a new flow and answer the provider's authorization URL; ``user_id``
    is the signed-in account asking to link (None for a sign-in). 404 for an
    unknown provider, 400 ``redirect_uri_not_allowed``, 503
    ``oidc_provider_unavailable`` when its discovery does not answer."""
    found = provider(settings, name)
    check_redirect_uri(settings, redirect_uri)
    document = metadata(found, settings.oidc_timeout_seconds)
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)
    url, _ = _client(settings, found, document).create_authorization_url(
        document["authorization_endpoint"], state=state, nonce=nonce, code_verifier=verifier)
    db.add(OidcFlow(id=new_id(), state_hash=sha256_hex(state), provider=found.name, nonce=nonce,
                    code_verifier=verifier, redirect_uri=redirect_uri, user_id=user_id,
                    created_at=now, expires_at=now + settings.oidc_flow_ttl))
    db.flush()
    return url


@dataclass(frozen=True)
class Flow:
    """A flow taken (deleted) by :func:`take_flow`, as plain values."""

    provider: str
    nonce: str
    code_verifier: str
    redirect_uri: str
    user_id: object


def take_flow(db: Session, name: str, state: str | None, now: datetime) -> Flow:
    """The flow ``state`` names, deleted (one use); 400 ``oidc_invalid_state``
    for an unknown, tampered or expired state or another provider's."""
    if not state:
        raise invalid_state()
    row = db.scalar(select(OidcFlow).where(OidcFlow.state_hash == sha256_hex(state))
                    .with_for_update())
    if row is None or row.provider != name:
        raise invalid_state()
    flow = Flow(row.provider, row.nonce, row.code_verifier, row.redirect_uri, row.user_id)
    db.delete(row)
    db.flush()
    if row.expires_at <= now:
        raise RecordedFailure(invalid_state())  # deleted all the same
    return flow


@dataclass(frozen=True)
class Claims:
    subject: str
    email: str | None
    email_verified: bool


def validate_id_token(found: OidcProvider, document: dict, id_token: str, nonce: str,
                      access_token: str | None, timeout: float, now: float | None = None) -> Claims:
    """The ID token's claims once its signature (from the provider's JWKS),
    ``iss``, ``aud``, ``exp``, ``iat`` and ``nonce`` (and ``at_hash``, when
    given) check out; 400 ``oidc_invalid_token`` otherwise."""
    from authlib.oidc.core import CodeIDToken
    from joserfc import jwt
    from joserfc.errors import InvalidKeyIdError, JoseError
    from joserfc.jwk import KeySet
    from joserfc.jws import JWSRegistry

    listed = document.get("id_token_signing_alg_values_supported")
    listed = listed if isinstance(listed, list) and listed else ["RS256"]
    registry = JWSRegistry(algorithms=[a for a in SIGNING_ALGORITHMS if a in listed])
    try:
        try:
            keys = KeySet.import_key_set(_get_json(found, document["jwks_uri"], timeout))
            token = jwt.decode(id_token, keys, algorithms=registry.allowed, registry=registry)
        except InvalidKeyIdError:  # rotated keys: fetch the set again, once
            keys = KeySet.import_key_set(_get_json(found, document["jwks_uri"], timeout,
                                                   force=True))
            token = jwt.decode(id_token, keys, algorithms=registry.allowed, registry=registry)
        params = {"nonce": nonce, "client_id": found.client_id}
        if access_token:
            params["access_token"] = access_token
        claims = CodeIDToken(token.claims, token.header,
                             {"iss": {"essential": True, "values": issuers(found)},
                              "aud": {"essential": True, "values": [found.client_id]},
                              "nonce": {"essential": True}},
                             params)
        claims.validate(now=now, leeway=LEEWAY_SECONDS)
    except DomainError:
        raise
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise invalid_id_token(getattr(exc, "description", None) or type(exc).__name__) from None
    if claims.get("nonce") != nonce:  # Authlib skips a nonce the token leaves out
        raise invalid_id_token("the nonce does not match")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 0 < len(subject) <= 255:
        raise invalid_id_token("no usable sub")
    email = claims.get("email")
    email = normalise_email(email) if isinstance(email, str) and email.strip() else None
    if email is not None and (len(email) > EMAIL_MAX or "@" not in email):
        email = None
    return Claims(subject, email, claims.get("email_verified") is True and email is not None)


def fetch_claims(settings: AuthSettings, flow: Flow, params: dict) -> Claims:
    """Trade the callback's code for tokens (with the PKCE verifier) and
    validate the ID token. 400 ``oidc_denied`` when the provider answered an
    error (the person refused), 503 when it does not answer."""
    if params.get("error"):
        raise DomainError("oidc_denied", "the provider did not sign you in", 400,
                          {"provider_error": str(params["error"])[:200]})
    if not params.get("code"):
        raise invalid_request("the provider sent no code", fields={"code": ["Missing."]})
    found = provider(settings, flow.provider)
    document = metadata(found, settings.oidc_timeout_seconds)
    if params.get("iss") and params["iss"].rstrip("/") != found.issuer:  # RFC 9207
        raise invalid_id_token("the response comes from another issuer")
    try:
        tokens = _client(settings, found, document).fetch_token(
            document["token_endpoint"], code=params["code"], code_verifier=flow.code_verifier,
            timeout=settings.oidc_timeout_seconds)
    except requests.RequestException:
        raise provider_unavailable(found.name) from None
    except Exception as exc:  # Authlib's OAuthError: the provider refused the code
        raise DomainError("oidc_denied", "the provider refused the sign-in code", 400,
                          {"provider_error": str(getattr(exc, "error", "") or "invalid_grant")[:200]}
                          ) from None
    if not isinstance(tokens.get("id_token"), str):
        raise invalid_id_token("the provider sent no ID token")
    return validate_id_token(found, document, tokens["id_token"], flow.nonce,
                             tokens.get("access_token"), settings.oidc_timeout_seconds)


def finish(db: Session, settings: AuthSettings, flow: Flow, claims: Claims, now: datetime) -> str:
    """Decide who signs in (the module's docstring), link what is to be
    linked, and answer the one-time code for the app."""
    identity = db.scalar(select(Identity).where(Identity.provider == flow.provider,
                                                Identity.subject == claims.subject))
    user_id = None
    if flow.user_id is not None:  # linking, asked by a signed-in account
        if db.get(User, flow.user_id) is None:  # erased since it started
            raise invalid_state()
        if identity is not None and identity.user_id != flow.user_id:
            raise identity_taken()
        if identity is None:
            _link(db, flow.user_id, flow.provider, claims, now)
        user_id = flow.user_id
    elif identity is not None:
        user_id = identity.user_id
    elif claims.email is not None and (existing := find_user_by_email(db, claims.email)):
        if not (existing.email_verified and claims.email_verified):
            raise link_required()
        _link(db, existing.id, flow.provider, claims, now)
        user_id = existing.id
    elif claims.email is None:
        raise DomainError("oidc_email_required", "the provider did not share an email address; "
                          "allow it, or register with a password", 400)
    code = secrets.token_urlsafe(32)
    db.add(OidcCode(id=new_id(), code_hash=sha256_hex(code), user_id=user_id,
                    provider=flow.provider, subject=claims.subject, email=claims.email,
                    email_verified=claims.email_verified, created_at=now,
                    expires_at=now + settings.oidc_code_ttl))
    db.flush()
    return code


def _link(db: Session, user_id, name: str, claims: Claims, now: datetime) -> Identity:
    identity = Identity(id=new_id(), user_id=user_id, provider=name, subject=claims.subject,
                        email=claims.email, email_verified=claims.email_verified, created_at=now)
    db.add(identity)
    db.flush()
    return identity


def app_url(redirect_uri: str, **params) -> str:
    """``redirect_uri`` with ``params`` added to its query."""
    separator = "&" if urlsplit(redirect_uri).query else "?"
    return redirect_uri + separator + urlencode(params)


# ---------------------------------------------------------------- the exchange


@dataclass
class Exchanged:
    login: sessions.LoginResult
    # a new account's events: auth.user_registered, and a verification code
    # when the provider did not say its address is verified
    events: list[tuple[str, dict]]

    @property
    def new_account(self) -> bool:
        return bool(self.events)


def exchange(db: Session, settings: AuthSettings, code: str, birth_date: date | None,
             age_confirmed: bool | None, client_ip: str | None, user_agent: str | None,
             now: datetime) -> Exchanged:
    """A session for the one-time ``code`` (used up). For a new subject the
    account is made here, after the age gate: 400 ``age_required`` leaves the
    code for another try; ``under_minimum_age`` deletes it and what it held
    (RecordedFailure: the caller commits the deletion). 400
    ``oidc_invalid_code`` for an unknown, used or expired code; 403
    ``account_disabled``; 403 ``password_sign_in_required`` for an
    administrator (they sign in with a password and TOTP)."""
    row = db.scalar(select(OidcCode).where(OidcCode.code_hash == sha256_hex(code))
                    .with_for_update())
    if row is None or row.expires_at <= now:
        raise DomainError("oidc_invalid_code", "the sign-in code is not valid or has expired", 400)
    events: list[tuple[str, dict]] = []
    if row.user_id is not None:
        user = db.get(User, row.user_id)
    else:
        try:
            met = age.check(settings, birth_date, age_confirmed, now.date())
        except DomainError as error:
            if error.code != age.UNDER_MINIMUM_AGE:
                raise
            db.delete(row)
            raise RecordedFailure(error) from None
        user, events = _sign_up(db, settings, row, met, now)
    db.delete(row)
    db.flush()
    if user is None:
        raise DomainError("oidc_invalid_code", "the sign-in code is not valid or has expired", 400)
    if user.disabled_at is not None:
        raise account_disabled()
    if user.is_admin:
        raise forbidden("administrators sign in with their password and TOTP code",
                        code="password_sign_in_required")
    return Exchanged(sessions.open_session(db, settings, user, client_ip, user_agent, now),
                     events)


def _sign_up(db: Session, settings: AuthSettings, row: OidcCode, minimum_age_met: bool,
             now: datetime) -> tuple[User, list[tuple[str, dict]]]:
    if find_user_by_email(db, row.email) is not None:
        raise email_taken()
    user = User(id=new_id(), email=row.email, email_verified=row.email_verified,
                password_hash=passwords.NO_PASSWORD, plan=settings.default_plan,
                processing_restricted=False, is_admin=False,
                minimum_age_met_at=now if minimum_age_met else None,
                created_at=now, updated_at=now)
    db.add(user)
    db.flush()
    _link(db, user.id, row.provider, Claims(row.subject, row.email, row.email_verified), now)
    events = [("user_registered", {"user_id": str(user.id), "email": user.email,
                                   "display_name": None})]
    if not user.email_verified:  # as a registration's: a code to verify the address
        code = verification.issue(db, settings, user, verification.REGISTRATION, user.email, now)
        if code is not None:
            events.append(("email_verification_requested", code))
    return user, events


# ---------------------------------------------------------------- the account's identities


def list_identities(db: Session, user: User) -> list[Identity]:
    return list(db.scalars(select(Identity).where(Identity.user_id == user.id)
                           .order_by(Identity.created_at, Identity.id)))


def unlink(db: Session, user: User, identity_id) -> Identity:
    """Remove one of the account's identities; 404 for another's; 409
    ``last_sign_in_method`` when the account has no password, no passkey and
    this is its only identity (it could never sign in again)."""
    locked(db, User, user.id)  # two unlinks at once cannot both take the last two
    identity = db.get(Identity, client_id(identity_id, "identity"))
    if identity is None or identity.user_id != user.id:
        raise not_found("identity")
    if not other_ways_to_sign_in(db, user, identity=identity):
        raise conflict("this is the account's only way to sign in: set a password first "
                       "(password reset)", code="last_sign_in_method")
    db.delete(identity)
    db.flush()
    return identity


def view(identity: Identity) -> dict:
    return {"id": identity.id, "provider": identity.provider, "email": identity.email,
            "email_verified": identity.email_verified, "created_at": identity.created_at}

