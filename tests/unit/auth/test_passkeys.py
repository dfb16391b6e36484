"""Passkeys (services/auth/passkeys.py) against the software authenticator of
tests/webauthn_authenticator.py: real attestation and assertion objects."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as settings_
from hypothesis import strategies as st
from sqlalchemy import func, select

from services.auth import accounts, oidc, passkeys, passwords, retention, sessions
from services.auth import privacy as auth_privacy
from services.auth.errors import RecordedFailure
from services.auth.models import Identity, Passkey, PasskeyChallenge, UserSession
from services.auth.settings import AuthSettings
from services.common.errors import DomainError
from tests.webauthn_authenticator import SoftwareAuthenticator

PASSWORD = "correct horse battery"
ORIGIN = "https://app.example.com"


@pytest.fixture
def settings():
    return AuthSettings.from_config({
        "MAIL_SECRETS_KEY": "unit-test-mail-secrets-key",
        "AUTH": {"SECRET_KEY": "unit-test-secret", "APP_BASE_URL": ORIGIN + "/",
                 "PUBLIC_BASE_URL": "https://api.example.com"},
    })


def make_user(db, settings, now, email="alice@example.com", verified=True):
    """A new account, with ``sid``: a live session of it (a passkey is added from one)."""
    user = accounts.register(db, settings, email, PASSWORD, None, None, now).user
    user.email_verified = verified
    user.sid = str(sessions.open_session(db, settings, user, None, None, now).session.id)
    db.commit()
    return user


@pytest.fixture
def alice(db, settings, now):
    return make_user(db, settings, now)


def refusal(db, call) -> DomainError:
    """What the service answers: a RecordedFailure commits what it recorded."""
    with pytest.raises((DomainError, RecordedFailure)) as info:
        call()
    error = info.value
    if isinstance(error, RecordedFailure):
        db.commit()
        return error.error
    db.rollback()
    return error


def enrol(db, settings, user, now, authenticator=None, fmt="none", name="Laptop"):
    authenticator = authenticator or SoftwareAuthenticator(ORIGIN)
    options = passkeys.registration_options(db, settings, user, user.sid, now)["options"]
    passkey = passkeys.register(db, settings, user, user.sid, authenticator.create(options, fmt=fmt), name,
                                now)
    db.commit()
    return authenticator, passkey


def sign_in(db, settings, authenticator, now, **kw):
    options = passkeys.authentication_options(db, settings, now)["options"]
    db.commit()
    result = passkeys.login(db, settings, authenticator.get(options, **kw), "198.51.100.7",
                            "test-agent", now)
    db.commit()
    return result


def test_the_relying_party_comes_from_app_base_url_unless_set(settings):
    assert settings.webauthn.rp_id == "app.example.com"
    assert settings.webauthn.origins == (ORIGIN,)
    custom = AuthSettings.from_config({"MAIL_SECRETS_KEY": "k", "AUTH": {
        "SECRET_KEY": "k", "WEBAUTHN_RP_ID": "example.com", "WEBAUTHN_RP_NAME": "Pics",
        "WEBAUTHN_ORIGINS": "https://example.com, https://app.example.com:8443",
        "WEBAUTHN_CHALLENGE_TTL_SECONDS": "60"}})
    assert custom.webauthn.rp_id == "example.com" and custom.webauthn.rp_name == "Pics"
    assert custom.webauthn.origins == ("https://example.com", "https://app.example.com:8443")
    assert custom.webauthn.challenge_ttl == timedelta(seconds=60)
    with pytest.raises(ValueError, match="WEBAUTHN_ORIGINS"):
        AuthSettings.from_config({"MAIL_SECRETS_KEY": "k", "AUTH": {"SECRET_KEY": "k",
                                           "WEBAUTHN_ORIGINS": "https://example.com/app"}})


def test_registration_options_ask_for_a_discoverable_verified_passkey(db, settings, now, alice):
    options = passkeys.registration_options(db, settings, alice, alice.sid, now)["options"]
    assert options["rp"] == {"id": "app.example.com", "name": "Darkroom"}
    assert options["user"]["name"] == "alice@example.com"
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert options["timeout"] == 300_000 and options["excludeCredentials"] == []
    authenticator, _ = enrol(db, settings, alice, now)
    again = passkeys.registration_options(db, settings, alice, alice.sid, now)["options"]
    assert [c["id"] for c in again["excludeCredentials"]] == [authenticator.id]


@pytest.mark.parametrize("fmt", ["none", "packed"])
def test_a_registered_passkey_signs_in_and_its_counter_is_kept(db, settings, now, alice, fmt):
    authenticator, passkey = enrol(db, settings, alice, now, fmt=fmt)
    assert passkey.user_id == alice.id and passkey.name == "Laptop"
    assert passkey.transports == ["internal", "hybrid"] and passkey.sign_count == 0
    later = now + timedelta(minutes=1)
    result = sign_in(db, settings, authenticator, later)
    assert result.user.id == alice.id and result.token
    session = db.get(UserSession, result.session.id)
    assert session.user_id == alice.id and session.network == "198.51.100.0/24"
    assert sessions.authenticate(db, result.token, None, later)[0].id == alice.id
    db.refresh(passkey)
    assert passkey.sign_count == 1 and passkey.last_used_at == later
    assert sign_in(db, settings, authenticator, later).user.id == alice.id
    db.refresh(passkey)
    assert passkey.sign_count == 2


def test_an_authenticator_without_a_counter_signs_in_again_and_again(db, settings, now, alice):
    authenticator, _ = enrol(db, settings, alice, now, SoftwareAuthenticator(ORIGIN, counter_step=0))
    for _ in range(2):
        assert sign_in(db, settings, authenticator, now).user.id == alice.id


def test_a_copy_whose_counter_goes_back_is_refused(db, settings, now, alice):
    authenticator, _ = enrol(db, settings, alice, now)
    clone = authenticator.copy()
    sign_in(db, settings, authenticator, now)
    sign_in(db, settings, authenticator, now)  # the owner's counter is at 2
    error = refusal(db, lambda: sign_in(db, settings, clone, now))  # the clone says 1
    assert (error.code, error.status) == ("passkey_clone_suspected", 401)
    assert db.scalar(select(func.count()).select_from(UserSession)) == 1 + 2  # make_user's


def test_a_challenge_is_used_once(db, settings, now, alice):
    authenticator, _ = enrol(db, settings, alice, now)
    options = passkeys.authentication_options(db, settings, now)["options"]
    db.commit()
    answer = authenticator.get(options)
    passkeys.login(db, settings, answer, None, None, now)
    db.commit()
    error = refusal(db, lambda: passkeys.login(db, settings, answer, None, None, now))
    assert (error.code, error.status) == ("passkey_challenge_invalid", 400)
    # a refused answer uses its challenge up too
    options = passkeys.authentication_options(db, settings, now)["options"]
    db.commit()
    wrong_origin = authenticator.get(options, origin="https://evil.example")
    assert refusal(db, lambda: passkeys.login(db, settings, wrong_origin, None, None,
                                              now)).code == "invalid_passkey"
    assert db.scalar(select(func.count()).select_from(PasskeyChallenge)) == 0


def test_an_expired_challenge_is_refused(db, settings, now, alice):
    authenticator = SoftwareAuthenticator(ORIGIN)
    options = passkeys.registration_options(db, settings, alice, alice.sid, now)["options"]
    db.commit()
    late = now + settings.webauthn.challenge_ttl + timedelta(seconds=1)
    error = refusal(db, lambda: passkeys.register(db, settings, alice, alice.sid, authenticator.create(options),
                                                  "Laptop", late))
    assert error.code == "passkey_challenge_invalid"
    assert db.scalar(select(func.count()).select_from(Passkey)) == 0


def test_a_registration_challenge_serves_only_its_account(db, settings, now, alice):
    bob = make_user(db, settings, now, "bob@example.com")
    options = passkeys.registration_options(db, settings, alice, alice.sid, now)["options"]
    db.commit()
    answer = SoftwareAuthenticator(ORIGIN).create(options)
    error = refusal(db, lambda: passkeys.register(db, settings, bob, bob.sid, answer, "x", now))
    assert error.code == "passkey_challenge_invalid"
    assert passkeys.register(db, settings, alice, alice.sid, answer, "Laptop", now).user_id == alice.id


@pytest.mark.parametrize("case", ["origin", "rp_id", "no_user_verification"])
def test_registration_from_elsewhere_or_without_verification_is_refused(db, settings, now, alice,
                                                                        case):
    authenticator = SoftwareAuthenticator(ORIGIN, user_verifying=case != "no_user_verification")
    options = passkeys.registration_options(db, settings, alice, alice.sid, now)["options"]
    db.commit()
    answer = authenticator.create(options, origin="https://evil.example" if case == "origin"
                                  else None, rp_id="evil.example" if case == "rp_id" else None)
    error = refusal(db, lambda: passkeys.register(db, settings, alice, alice.sid, answer, "x", now))
    assert (error.code, error.status, error.details) == ("invalid_passkey", 400,
                                                         {"reason": "verification"})
    assert db.scalar(select(func.count()).select_from(Passkey)) == 0
    assert db.scalar(select(func.count()).select_from(PasskeyChallenge)) == 0  # used up


def test_a_sign_in_without_user_verification_or_with_a_bad_signature_is_refused(db, settings,
                                                                                now, alice):
    authenticator, _ = enrol(db, settings, alice, now)
    authenticator.user_verifying = False
    error = refusal(db, lambda: sign_in(db, settings, authenticator, now))
    assert (error.code, error.status) == ("invalid_passkey", 401)
    authenticator.user_verifying = True
    options = passkeys.authentication_options(db, settings, now)["options"]
    db.commit()
    answer = authenticator.get(options)
    answer["response"]["signature"] = authenticator.get(options)["response"]["signature"][:-4] + "AAAA"
    assert refusal(db, lambda: passkeys.login(db, settings, answer, None, None,
                                              now)).code == "invalid_passkey"


def test_an_unknown_passkey_and_malformed_answers_are_refused(db, settings, now, alice):
    options = passkeys.authentication_options(db, settings, now)["options"]
    db.commit()
    stranger = SoftwareAuthenticator(ORIGIN)
    stranger.rp_id = "app.example.com"
    error = refusal(db, lambda: passkeys.login(db, settings, stranger.get(options), None, None, now))
    assert (error.code, error.details) == ("invalid_passkey", {"reason": "unknown"})
    for bad in ({"id": "x"}, {"id": "AA", "rawId": "AA", "type": "public-key",
                              "response": {"clientDataJSON": "!!!", "authenticatorData": 5}}):
        error = refusal(db, lambda bad=bad: passkeys.login(db, settings, bad, None, None, now))
        assert (error.code, error.status, error.details) == ("invalid_passkey", 401,
                                                             {"reason": "malformed"})
        error = refusal(db, lambda bad=bad: passkeys.register(db, settings, alice, alice.sid, bad, "x", now))
        assert (error.code, error.status) == ("invalid_passkey", 400)


def test_an_administrator_signs_in_with_a_passkey_instead_of_a_totp_code(db, settings, now, alice):
    authenticator, _ = enrol(db, settings, alice, now)
    accounts.set_admin(db, settings, alice.email, True, now)
    db.commit()
    # a password alone is not enough for an administrator...
    subjects = sessions.begin_login(db, settings, alice.email, None, now)
    error = refusal(db, lambda: sessions.login(db, settings, subjects, alice.email, PASSWORD, None,
                                               None, None, now))
    assert error.code == "totp_required"
    # ...a passkey (possession and a PIN or biometric) is
    result = sign_in(db, settings, authenticator, now)
    assert result.user.id == alice.id and result.user.is_admin


def test_a_disabled_account_cannot_sign_in_with_its_passkey(db, settings, now, alice):
    authenticator, _ = enrol(db, settings, alice, now)
    alice.disabled_at = now
    db.commit()
    assert refusal(db, lambda: sign_in(db, settings, authenticator, now)).code == "account_disabled"


def test_a_passkey_is_added_only_from_a_live_session_of_the_account(db, settings, now, alice):
    bob = make_user(db, settings, now, "bob@example.com")
    for session_id in (None, "not-an-id", bob.sid):
        error = refusal(db, lambda s=session_id: passkeys.registration_options(db, settings, alice,
                                                                               s, now))
        assert (error.code, error.status) == ("session_required", 403)
    options = passkeys.registration_options(db, settings, alice, alice.sid, now)["options"]
    db.commit()
    sessions.revoke(db, alice.sid, now, user=alice)
    db.commit()
    answer = SoftwareAuthenticator(ORIGIN).create(options)
    error = refusal(db, lambda: passkeys.register(db, settings, alice, alice.sid, answer, "x", now))
    assert error.code == "session_required"
    assert db.scalar(select(func.count()).select_from(Passkey)) == 0


def test_an_unverified_account_cannot_add_a_passkey(db, settings, now):
    carol = make_user(db, settings, now, "carol@example.com", verified=False)
    assert refusal(db, lambda: passkeys.registration_options(db, settings, carol, carol.sid, now)).code == \
        "email_unverified"


def test_the_same_passkey_cannot_be_registered_twice(db, settings, now, alice):
    authenticator, _ = enrol(db, settings, alice, now)
    bob = make_user(db, settings, now, "bob@example.com")
    options = passkeys.registration_options(db, settings, bob, bob.sid, now)["options"]
    db.commit()
    error = refusal(db, lambda: passkeys.register(db, settings, bob, bob.sid, authenticator.create(options),
                                                  "stolen", now))
    assert (error.code, error.status) == ("passkey_exists", 409)


def test_listing_and_removing_touch_only_the_callers_passkeys(db, settings, now, alice):
    _, laptop = enrol(db, settings, alice, now)
    _, phone = enrol(db, settings, alice, now + timedelta(seconds=1), name="Phone")
    rows, cursor = passkeys.list_for(db, alice, 1, None)
    assert [p.id for p in rows] == [phone.id] and cursor
    assert [p.id for p in passkeys.list_for(db, alice, 5, cursor)[0]] == [laptop.id]
    assert passkeys.view(phone)["name"] == "Phone"
    bob = make_user(db, settings, now, "bob@example.com")
    assert refusal(db, lambda: passkeys.remove(db, bob, phone.id)).code == "not_found"
    assert refusal(db, lambda: passkeys.remove(db, alice, "not-an-id")).code == "not_found"
    passkeys.remove(db, alice, phone.id)
    db.commit()
    assert [p.id for p in passkeys.list_for(db, alice, 5, None)[0]] == [laptop.id]


def test_the_last_way_to_sign_in_is_never_removed(db, settings, now, alice):
    _, only = enrol(db, settings, alice, now)
    alice.password_hash = passwords.NO_PASSWORD  # an account made at a provider
    db.commit()
    error = refusal(db, lambda: passkeys.remove(db, alice, only.id))
    assert (error.code, error.status) == ("last_sign_in_method", 409)
    _, second = enrol(db, settings, alice, now)
    passkeys.remove(db, alice, only.id)  # another passkey is left
    db.commit()
    assert refusal(db, lambda: passkeys.remove(db, alice, second.id)).code == "last_sign_in_method"


def test_passkeys_are_exported_and_erased(db, settings, now, alice):
    authenticator, passkey = enrol(db, settings, alice, now)
    passkeys.authentication_options(db, settings, now)
    passkeys.registration_options(db, settings, alice, alice.sid, now)
    db.commit()
    exported = auth_privacy.export(db, settings, alice.id)["passkeys"]
    assert [(p["id"], p["name"], p["aaguid"]) for p in exported] == [
        (str(passkey.id), "Laptop", "00112233-4455-6677-8899-aabbccddeeff")]
    assert "public_key" not in exported[0]
    erased = auth_privacy.erase(db, settings, alice.id, now)
    db.commit()
    assert erased.tables["passkeys"] == 1 and erased.tables["passkey_challenges"] == 1
    assert db.scalar(select(func.count()).select_from(Passkey)) == 0
    error = refusal(db, lambda: sign_in(db, settings, authenticator, now))
    assert error.details == {"reason": "unknown"}


def test_expired_challenges_are_purged(db, settings, now, alice):
    passkeys.authentication_options(db, settings, now)
    db.commit()
    assert retention.purge_expired(db, settings, now)["passkey_challenges"] == 0
    later = now + settings.webauthn.challenge_ttl + timedelta(days=1, seconds=1)
    assert retention.purge_expired(db, settings, later)["passkey_challenges"] == 1


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.sampled_from(["AA", "public-key", "webauthn.get", "!!", "platform"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=10)
RESPONSE_KEYS = ("clientDataJSON", "attestationObject", "authenticatorData", "signature",
                 "userHandle", "transports")


@settings_(max_examples=150, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(credential=st.fixed_dictionaries(
    {}, optional={"id": JSON, "rawId": JSON, "type": JSON, "authenticatorAttachment": JSON,
                  "response": JSON | st.fixed_dictionaries(
                      {}, optional={k: JSON for k in RESPONSE_KEYS})}))
def test_any_answer_is_refused_with_a_code_never_a_crash(db, settings, now, alice, credential):
    for call in (lambda: passkeys.login(db, settings, credential, None, None, now),
                 lambda: passkeys.register(db, settings, alice, alice.sid, credential, "x", now)):
        error = refusal(db, call)
        assert error.code in ("invalid_passkey", "passkey_challenge_invalid"), error


def test_passkeys_and_linked_providers_count_for_each_other(db, settings, now, alice):
    alice.password_hash = passwords.NO_PASSWORD
    identity = Identity(user_id=alice.id, provider="google", subject="g-1",
                        email=alice.email, email_verified=True, created_at=now)
    db.add(identity)
    db.commit()
    _, passkey = enrol(db, settings, alice, now)
    oidc.unlink(db, alice, identity.id)  # the passkey is left to sign in with
    db.commit()
    error = refusal(db, lambda: passkeys.remove(db, alice, passkey.id))
    assert error.code == "last_sign_in_method"
