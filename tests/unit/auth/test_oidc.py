"""OpenID Connect sign-in, domain-level (services/auth/oidc.py), against a real
provider process (tests/oidc_provider.py) and an in-memory database."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from services.auth import accounts, oidc, passwords
from services.auth.errors import RecordedFailure
from services.auth.models import Identity, OidcCode, OidcFlow, User
from services.auth.settings import OidcProvider, oidc_providers
from services.common.errors import DomainError
from services.common.ids import utcnow
from tests.conftest import free_port
from tests.oidc_provider import OidcProvider as ProviderProcess
from tests.oidc_provider import query_of, with_param

APP = "http://app.example.test/after-sign-in"
CLIENT_ID, CLIENT_SECRET = "darkroom-unit", "unit-secret"


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    with ProviderProcess(tmp_path_factory.mktemp("oidc")) as process:
        yield process


@pytest.fixture(scope="module")
def expired_provider(tmp_path_factory):
    with ProviderProcess(tmp_path_factory.mktemp("oidc-expired"), token_max_age=-600) as process:
        yield process


@pytest.fixture(autouse=True)
def fresh_cache():
    oidc.forget_cache()
    yield
    oidc.forget_cache()


def configured(settings, **issuers):
    return replace(settings, oidc_providers={
        name: OidcProvider(name, issuer, CLIENT_ID, CLIENT_SECRET) for name, issuer in issuers.items()},
        oidc_redirect_bases=("http://app.example.test",))


@pytest.fixture
def conf(settings, provider):
    return configured(settings, corp=provider.issuer)


def error_of(call, *args, **kwargs) -> DomainError:
    with pytest.raises((DomainError, RecordedFailure)) as info:
        call(*args, **kwargs)
    error = info.value
    return error.error if isinstance(error, RecordedFailure) else error


def sign_in(db, conf, provider, subject, *, user_id=None, tamper=None, name="corp"):
    """Start, authorize at the provider as ``subject``, come back: the app URL."""
    now = utcnow()
    url = oidc.start(db, conf, name, APP, user_id, now)
    if tamper:
        url = tamper(url)
    back = query_of(provider.authorize(url, subject))
    flow = oidc.take_flow(db, name, back["state"], now)
    claims = oidc.fetch_claims(conf, flow, back)
    return oidc.finish(db, conf, flow, claims, now)


def exchange(db, conf, code, birth_date=None, age_confirmed=None):
    return oidc.exchange(db, conf, code, birth_date, age_confirmed, "203.0.113.9", "test",
                         utcnow())


def new_subject(provider, verified=True, email=None):
    subject = f"sub-{uuid.uuid4().hex[:8]}"
    email = email or f"{subject}@example.com"
    provider.set_user(subject, email=email, email_verified=verified)
    return subject, email


def test_the_authorization_url_carries_pkce_state_and_nonce(db, conf, provider):
    url = oidc.start(db, conf, "corp", APP, None, utcnow())
    query = query_of(url)
    assert url.startswith(provider.issuer + "/oauth2/authorize?")
    assert query["response_type"] == "code" and query["client_id"] == CLIENT_ID
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["redirect_uri"] == f"{conf.public_base_url}/v1/auth/oidc/corp/callback"
    assert "openid" in query["scope"].split()
    flow = db.scalar(select(OidcFlow))
    # kept server side: the state only as a hash; the nonce and verifier never in the URL
    assert flow.state_hash != query["state"] and len(flow.state_hash) == 64
    assert flow.nonce == query["nonce"] and flow.code_verifier not in url
    assert flow.redirect_uri == APP
    # S256: the challenge is the verifier's SHA-256 (RFC 7636), the verifier stays here
    import base64
    import hashlib
    digest = hashlib.sha256(flow.code_verifier.encode()).digest()
    assert query["code_challenge"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_sign_up_then_sign_in_with_the_same_subject(db, conf, provider):
    subject, email = new_subject(provider)
    code = sign_in(db, conf, provider, subject)
    first = exchange(db, conf, code)
    user = first.login.user
    assert first.events == [("user_registered", {"user_id": str(user.id), "email": email,
                                                 "display_name": None})]
    assert user.email == email and user.email_verified is True
    assert not passwords.has_password(user.password_hash)
    assert db.scalar(select(Identity)).subject == subject
    # the code is single-use
    assert error_of(exchange, db, conf, code).code == "oidc_invalid_code"
    again = exchange(db, conf, sign_in(db, conf, provider, subject))
    assert again.login.user.id == user.id and not again.new_account
    assert db.scalar(select(func.count()).select_from(User)) == 1


def test_an_unverified_provider_address_makes_an_unverified_account(db, conf, provider):
    subject, _ = new_subject(provider, verified=False)
    done = exchange(db, conf, sign_in(db, conf, provider, subject))
    assert done.login.user.email_verified is False
    # a code to verify it is mailed, as after a registration
    assert [kind for kind, _ in done.events] == ["user_registered", "email_verification_requested"]


def verified_account(db, settings, email):
    user = accounts.register(db, settings, email, "correct horse battery", None, None,
                             utcnow()).user
    user.email_verified = True
    db.flush()
    return user


def test_an_account_is_linked_when_both_addresses_are_verified(db, conf, provider):
    subject, email = new_subject(provider)
    user = verified_account(db, conf, email)
    signed_in = exchange(db, conf, sign_in(db, conf, provider, subject)).login.user
    assert signed_in.id == user.id
    assert [i.subject for i in oidc.list_identities(db, user)] == [subject]


def test_no_automatic_link_unless_both_sides_are_verified(db, conf, provider):
    subject, email = new_subject(provider, verified=False)
    verified_account(db, conf, email)
    assert error_of(sign_in, db, conf, provider, subject).code == "link_required"
    subject2, email2 = new_subject(provider, verified=True)
    accounts.register(db, conf, email2, "correct horse battery", None, None, utcnow())
    assert error_of(sign_in, db, conf, provider, subject2).code == "link_required"
    assert db.scalar(select(func.count()).select_from(Identity)) == 0


def test_explicit_link_and_a_refused_link(db, conf, provider):
    subject, _ = new_subject(provider, verified=False, email="someone-else@example.com")
    user = verified_account(db, conf, f"linker-{uuid.uuid4().hex[:6]}@example.com")
    code = sign_in(db, conf, provider, subject, user_id=user.id)
    assert exchange(db, conf, code).login.user.id == user.id
    assert oidc.list_identities(db, user)[0].subject == subject
    other = verified_account(db, conf, f"other-{uuid.uuid4().hex[:6]}@example.com")
    error = error_of(sign_in, db, conf, provider, subject, user_id=other.id)
    assert (error.code, error.status) == ("identity_taken", 409)
    assert oidc.list_identities(db, other) == []


def test_a_tampered_or_replayed_state_is_refused(db, conf, provider):
    subject, _ = new_subject(provider)
    now = utcnow()
    url = oidc.start(db, conf, "corp", APP, None, now)
    back = query_of(provider.authorize(url, subject))
    assert error_of(oidc.take_flow, db, "corp", back["state"] + "x", now).code == \
        "oidc_invalid_state"
    assert error_of(oidc.take_flow, db, "other", back["state"], now).code == "oidc_invalid_state"
    oidc.take_flow(db, "corp", back["state"], now)
    assert error_of(oidc.take_flow, db, "corp", back["state"], now).code == "oidc_invalid_state"


def test_an_expired_flow_is_refused_and_deleted(db, conf, provider):
    now = utcnow()
    url = oidc.start(db, conf, "corp", APP, None, now - conf.oidc_flow_ttl - timedelta(seconds=1))
    state = query_of(url)["state"]
    assert error_of(oidc.take_flow, db, "corp", state, now).code == "oidc_invalid_state"
    assert db.scalar(select(func.count()).select_from(OidcFlow)) == 0


def test_a_wrong_nonce_is_refused(db, conf, provider):
    subject, _ = new_subject(provider)
    error = error_of(sign_in, db, conf, provider, subject,
                     tamper=lambda url: with_param(url, "nonce", "not-the-nonce"))
    assert error.code == "oidc_invalid_token"


def test_an_expired_id_token_is_refused(db, settings, expired_provider):
    conf = configured(settings, old=expired_provider.issuer)
    subject, _ = new_subject(expired_provider)
    error = error_of(sign_in, db, conf, expired_provider, subject, name="old")
    assert error.code == "oidc_invalid_token"


def test_another_client_id_is_refused_as_the_audience(db, conf, provider):
    subject, _ = new_subject(provider)
    now = utcnow()
    url = oidc.start(db, conf, "corp", APP, None, now)
    back = query_of(provider.authorize(url, subject))
    flow = oidc.take_flow(db, "corp", back["state"], now)
    # the token is issued for the client that asked; validated as another client's
    wrong = replace(conf, oidc_providers={"corp": replace(conf.oidc_providers["corp"],
                                                          client_id="someone-else")})
    with pytest.raises(DomainError):
        oidc.fetch_claims(wrong, flow, back)


def test_a_provider_that_does_not_answer(db, settings):
    conf = configured(settings, gone=f"http://127.0.0.1:{free_port()}")
    error = error_of(oidc.start, db, conf, "gone", APP, None, utcnow())
    assert (error.code, error.status) == ("oidc_provider_unavailable", 503)
    assert db.scalar(select(func.count()).select_from(OidcFlow)) == 0


def test_redirect_uris_must_be_on_the_allow_list(db, conf):
    for bad in ("http://evil.example.test/", "https://app.example.test/x",
                "http://app.example.test.evil.test/", "http://app.example.test/#frag"):
        assert error_of(oidc.start, db, conf, "corp", bad, None, utcnow()).code == \
            "redirect_uri_not_allowed"
    assert error_of(oidc.start, db, conf, "nope", APP, None, utcnow()).code == "not_found"


def test_the_age_gate_comes_before_the_account(db, conf, provider):
    gated = replace(conf, minimum_age=13)
    subject, email = new_subject(provider)
    code = sign_in(db, gated, provider, subject)
    assert error_of(exchange, db, gated, code).code == "age_required"
    assert db.scalar(select(func.count()).select_from(User)) == 0
    assert db.scalar(select(func.count()).select_from(OidcCode)) == 1  # ask, then try again
    young = date.today().replace(year=date.today().year - 10)
    assert error_of(exchange, db, gated, code, young).code == "under_minimum_age"
    # nothing about the person is left: not the account, not the code and its claims
    assert db.scalar(select(func.count()).select_from(User)) == 0
    assert db.scalar(select(func.count()).select_from(OidcCode)) == 0
    assert db.scalar(select(func.count()).select_from(Identity)) == 0
    code = sign_in(db, gated, provider, subject)
    user = exchange(db, gated, code, date(1990, 5, 1)).login.user
    assert user.email == email and user.minimum_age_met_at is not None


def test_the_last_way_to_sign_in_cannot_be_unlinked(db, conf, provider):
    subject, _ = new_subject(provider)
    user = exchange(db, conf, sign_in(db, conf, provider, subject)).login.user
    (only,) = oidc.list_identities(db, user)
    error = error_of(oidc.unlink, db, user, only.id)
    assert (error.code, error.status) == ("last_sign_in_method", 409)
    second, _ = new_subject(provider, email="second@example.com")
    exchange(db, conf, sign_in(db, conf, provider, second, user_id=user.id))
    oidc.unlink(db, user, only.id)
    (left,) = oidc.list_identities(db, user)
    assert error_of(oidc.unlink, db, user, left.id).code == "last_sign_in_method"
    user.password_hash = passwords.hash_password("correct horse battery")
    oidc.unlink(db, user, left.id)
    assert oidc.list_identities(db, user) == []


def test_another_accounts_identity_is_not_found(db, conf, provider):
    subject, _ = new_subject(provider)
    owner = exchange(db, conf, sign_in(db, conf, provider, subject)).login.user
    stranger = verified_account(db, conf, "stranger@example.com")
    (identity,) = oidc.list_identities(db, owner)
    assert error_of(oidc.unlink, db, stranger, identity.id).code == "not_found"


def test_providers_come_from_the_environment():
    env = {"AUTH_OIDC_GOOGLE_ISSUER": "https://accounts.google.com/",
           "AUTH_OIDC_GOOGLE_CLIENT_ID": "id", "AUTH_OIDC_GOOGLE_CLIENT_SECRET": "secret",
           "AUTH_OIDC_CORP_ISSUER": "https://sso.corp.test", "AUTH_OIDC_CORP_CLIENT_ID": "c",
           "AUTH_OIDC_CORP_CLIENT_SECRET": "s", "AUTH_OIDC_CORP_SCOPES": "email groups"}
    found = oidc_providers("google, corp", env)
    assert found["google"] == OidcProvider("google", "https://accounts.google.com", "id",
                                           "secret", "openid email profile")
    assert found["corp"].scopes == "openid email groups"
    with pytest.raises(ValueError, match="AUTH_OIDC_CORP_CLIENT_SECRET"):
        oidc_providers("corp", {k: v for k, v in env.items() if "SECRET" not in k})
    with pytest.raises(ValueError, match="not a valid provider name"):
        oidc_providers("bad-name", env)


def test_discovery_and_keys_are_cached(db, conf, provider, monkeypatch):
    fetched = []
    real_get = oidc.requests.get

    def counting_get(url, **kw):
        fetched.append(url.removeprefix(provider.issuer))
        return real_get(url, **kw)

    monkeypatch.setattr(oidc.requests, "get", counting_get)
    for _ in range(2):
        subject, _ = new_subject(provider)
        exchange(db, conf, sign_in(db, conf, provider, subject))
    assert fetched == ["/.well-known/openid-configuration", "/jwks"]
    oidc.forget_cache()
    oidc.start(db, conf, "corp", APP, None, utcnow())
    assert fetched[-1] == "/.well-known/openid-configuration"


def test_the_redirect_allow_list_defaults_to_the_apps_base(settings):
    from services.auth.settings import AuthSettings

    base = {"MAIL_SECRETS_KEY": "k"}
    public = AuthSettings.from_config({**base, "AUTH": {
        "SECRET_KEY": "s", "PUBLIC_BASE_URL": "https://api.example.test"}})
    assert public.oidc_redirect_bases == ("https://api.example.test",)
    app = AuthSettings.from_config({**base, "AUTH": {
        "SECRET_KEY": "s", "PUBLIC_BASE_URL": "https://api.example.test",
        "APP_BASE_URL": "https://app.example.test/"}})
    assert app.oidc_redirect_bases == ("https://app.example.test",)
    listed = AuthSettings.from_config({**base, "AUTH": {
        "SECRET_KEY": "s", "OIDC_REDIRECT_URIS": "https://a.test/x, http://localhost:3000"}})
    assert listed.oidc_redirect_bases == ("https://a.test/x", "http://localhost:3000")
    with pytest.raises(ValueError):
        AuthSettings.from_config({**base, "AUTH": {"SECRET_KEY": "s",
                                                   "OIDC_REDIRECT_URIS": "not a url"}})


def test_a_link_for_an_account_erased_meanwhile_is_refused(db, conf, provider):
    subject, _ = new_subject(provider)
    error = error_of(sign_in, db, conf, provider, subject, user_id=uuid.uuid4())
    assert error.code == "oidc_invalid_state"
    assert db.scalar(select(func.count()).select_from(Identity)) == 0


def test_an_unsigned_id_token_is_refused_whatever_discovery_lists(db, conf, provider):
    import base64
    import json

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    found = conf.oidc_providers["corp"]
    document = {**oidc.metadata(found, 5), "id_token_signing_alg_values_supported":
                ["none", "HS256", "RS256"]}
    now = int(utcnow().timestamp())
    unsigned = ".".join([part({"alg": "none"}), part({
        "iss": found.issuer, "aud": CLIENT_ID, "sub": "mallory", "nonce": "n",
        "iat": now, "exp": now + 600}), ""])
    with pytest.raises(DomainError) as info:
        oidc.validate_id_token(found, document, unsigned, "n", None, 5)
    assert info.value.code == "oidc_invalid_token"


def test_google_tokens_may_name_the_issuer_without_its_scheme():
    google = OidcProvider("google", "https://accounts.google.com", CLIENT_ID, CLIENT_SECRET)
    assert oidc.issuers(google) == ["https://accounts.google.com", "https://accounts.google.com/",
                                    "accounts.google.com"]
    corp = OidcProvider("corp", "https://id.example.com", CLIENT_ID, CLIENT_SECRET)
    assert "id.example.com" not in oidc.issuers(corp)


@pytest.mark.parametrize("methods, expected", [
    (None, "client_secret_basic"),
    (["client_secret_basic", "client_secret_post"], "client_secret_basic"),
    (["client_secret_post"], "client_secret_post"),
    (["private_key_jwt"], "client_secret_basic"),
])
def test_the_token_endpoint_is_authenticated_as_discovery_allows(conf, methods, expected):
    found = conf.oidc_providers["corp"]
    document = {} if methods is None else {"token_endpoint_auth_methods_supported": methods}
    assert oidc._client(conf, found, document).token_endpoint_auth_method == expected
