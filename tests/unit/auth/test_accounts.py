"""Registration, login, sessions, keys, password reset and admin, domain-level."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pyotp
import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select

from services.auth import accounts, keys, sessions
from services.auth.errors import RecordedFailure, invalid_credentials
from services.auth.models import ApiKey, KnownNetwork, Throttle, User
from services.common.errors import DomainError
from tests.unit.auth.conftest import MAIL_SECRETS_KEY

PASSWORD = "correct horse battery"
IP = "203.0.113.10"


def error_of(callable_, *args, **kwargs) -> DomainError:
    with pytest.raises((DomainError, RecordedFailure)) as info:
        callable_(*args, **kwargs)
    error = info.value
    return error.error if isinstance(error, RecordedFailure) else error


def count(db, model) -> int:
    return db.scalar(select(func.count()).select_from(model))


@pytest.fixture
def alice(db, settings, now):
    return accounts.register(db, settings, "alice@example.com", PASSWORD, "Alice", IP, now)


def like_the_service(db, call, *args):
    """Commit what a refusal recorded (RecordedFailure) and roll back any other
    refusal, as services/auth/service.py does."""
    try:
        result = call(*args)
    except RecordedFailure:
        db.commit()
        raise
    except DomainError:
        db.rollback()
        raise
    db.commit()
    return result


def login(db, settings, now, password=PASSWORD, totp_code=None, ip=IP, email="alice@example.com"):
    """As the service's login: the attempt taken and committed first, then checked."""
    subjects = like_the_service(db, sessions.begin_login, db, settings, email, ip, now)
    return like_the_service(db, sessions.login, db, settings, subjects, email, password,
                            totp_code, ip, "pytest/1", now)


def verified(user: User) -> User:
    user.email_verified = True
    return user


def attempts(db) -> dict[str, int]:
    return {t.subject: t.attempts for t in db.scalars(select(Throttle))}


# ---------------------------------------------------------------- registration


def test_register_creates_an_unverified_user_without_an_api_key(db, settings, now, alice):
    user = alice.user
    assert (user.email, user.email_verified, user.plan, user.display_name) == (
        "alice@example.com", False, "free", "Alice"
    )
    assert user.password_hash.startswith("$argon2id$")
    assert count(db, ApiKey) == 0  # no key before the address is verified
    assert count(db, KnownNetwork) == 1
    assert [kind for kind, _ in alice.events] == ["user_registered", "email_verification_requested"]
    assert alice.events[1][1]["email"] == "alice@example.com"


def test_a_registered_address_answers_like_a_new_one_and_tells_its_owner(db, settings, now, alice):
    again = accounts.register(db, settings, "alice@example.com", "another passphrase", "Eve",
                              "198.51.100.1", now)
    stand_in = again.user
    assert stand_in not in db and stand_in.id != alice.user.id
    assert (stand_in.email, stand_in.email_verified, stand_in.display_name, stand_in.plan) == (
        "alice@example.com", False, "Eve", "free")
    assert stand_in.created_at == now and stand_in.password_hash.startswith("$argon2id$")
    assert again.events == [("signup_attempted", {
        "user_id": str(alice.user.id), "email": "alice@example.com",
        "attempted_at": now.isoformat().replace("+00:00", "Z")})]
    assert count(db, User) == 1 and db.get(User, alice.user.id).display_name == "Alice"
    # one mail per RESEND_MIN_INTERVAL_SECONDS: a stranger cannot flood the inbox
    assert accounts.register(db, settings, "alice@example.com", PASSWORD, None, None,
                             now + timedelta(seconds=59)).events == []
    later = accounts.register(db, settings, "alice@example.com", PASSWORD, None, None,
                              now + timedelta(seconds=60))
    assert [kind for kind, _ in later.events] == ["signup_attempted"]


def test_register_refuses_a_weak_password_for_any_address(db, settings, now, alice):
    for address in ("bob@example.com", "alice@example.com"):
        weak = error_of(accounts.register, db, settings, address, "password123", None, None, now)
        assert weak.code == "weak_password"
    assert count(db, User) == 1


# ---------------------------------------------------------------- login


def test_login_opens_a_session_from_a_known_network_quietly(db, settings, now, alice):
    result = login(db, settings, now)
    assert result.token.startswith("drs_")
    assert result.session.expires_at == now + timedelta(days=7)
    assert result.session.network == "203.0.113.0/24"
    assert result.suspicious_login is None
    assert result.session.token_hash != result.token


def test_login_from_a_new_network_is_reported_once(db, settings, now, alice):
    first = login(db, settings, now, ip="198.51.100.7")
    assert first.suspicious_login == {
        "user_id": str(alice.user.id),
        "email": "alice@example.com",
        "network": "198.51.100.0/24",
        "user_agent": "pytest/1",
        "login_at": now.isoformat().replace("+00:00", "Z"),
    }
    assert login(db, settings, now, ip="198.51.100.200").suspicious_login is None


def test_wrong_password_and_unknown_email_fail_alike_and_are_counted(db, settings, now, alice):
    wrong = error_of(login, db, settings, now, password="not the password")
    unknown = error_of(login, db, settings, now, email="nobody@example.com")
    assert (wrong.code, wrong.status) == (unknown.code, unknown.status) == (
        "invalid_credentials", 401
    )
    # account subjects once each, the address twice
    assert sorted(attempts(db).values()) == [1, 1, 2]


def test_lockout_refuses_even_the_right_password(db, settings, now, alice):
    for _ in range(3):
        error_of(login, db, settings, now, password="not the password", ip=None)
    error = error_of(login, db, settings, now, ip=None)
    assert (error.code, error.details["retry_after"]) == ("rate_limited", 300)
    assert login(db, settings, now + timedelta(seconds=300), ip=None).token


def test_success_clears_the_accounts_failures(db, settings, now, alice):
    for _ in range(2):
        error_of(login, db, settings, now, password="not the password", ip=None)
    login(db, settings, now, ip=None)
    for _ in range(2):
        error_of(login, db, settings, now, password="not the password", ip=None)
    assert login(db, settings, now, ip=None).token  # 2 + 2 failures never reached 3 in a row


def test_a_success_gives_the_address_back_its_attempt(db, settings, now, alice):
    for _ in range(6):  # the address allows 5 failures; successes do not count
        assert login(db, settings, now).token
    assert list(attempts(db).values()) == [0]  # the address's; the account's row is gone


def test_login_rehashes_a_password_hashed_with_old_parameters(db, settings, now, alice):
    old = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    alice.user.password_hash = old
    login(db, settings, now)
    assert alice.user.password_hash != old
    assert alice.user.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_totp_is_required_checked_and_never_replayed(db, settings, now, alice):
    enrollment = accounts.begin_totp_enrollment(verified(alice.user), "Darkroom")
    code = pyotp.TOTP(enrollment["secret"]).at(now)
    accounts.confirm_totp_enrollment(alice.user, code, now)
    assert alice.user.totp_enabled
    assert error_of(login, db, settings, now).code == "totp_required"
    # the enrolment code is spent; so is every code of the same step
    assert error_of(login, db, settings, now, totp_code=code).code == "invalid_totp"
    later = now + timedelta(seconds=30)
    next_code = pyotp.TOTP(enrollment["secret"]).at(later)
    assert login(db, settings, later, totp_code=next_code).token
    assert error_of(login, db, settings, later, totp_code=next_code).code == "invalid_totp"


def test_a_totp_step_is_claimed_by_a_conditional_update(db, settings, now, alice):
    stale = accounts.begin_totp_enrollment(verified(alice.user), "Darkroom")
    accounts.confirm_totp_enrollment(alice.user, pyotp.TOTP(stale["secret"]).at(now), now)
    db.commit()
    step = alice.user.totp_last_step
    # another worker claimed the next step after this one read the account
    db.execute(User.__table__.update().values(totp_last_step=step + 1))
    assert not sessions.claim_totp_step(db, alice.user, step + 1)
    assert sessions.claim_totp_step(db, alice.user, step + 2)
    assert alice.user.totp_last_step == step + 2


def test_asking_for_the_second_factor_is_not_a_guess_but_cannot_reset_the_count(
        db, settings, now, alice):
    secret = accounts.begin_totp_enrollment(verified(alice.user), "Darkroom")["secret"]
    accounts.confirm_totp_enrollment(alice.user, pyotp.TOTP(secret).at(now), now)
    db.commit()
    later = now + timedelta(seconds=30)
    for _ in range(2):
        assert error_of(login, db, settings, later, totp_code="000000", ip=None).code == (
            "invalid_totp")
        assert error_of(login, db, settings, later, ip=None).code == "totp_required"
    # two wrong codes counted; totp_required neither counted nor forgave them
    assert error_of(login, db, settings, later, totp_code="000000", ip=None).code == "invalid_totp"
    assert error_of(login, db, settings, later, ip=None).code == "rate_limited"


def test_enrolment_needs_a_verified_address(db, settings, now, alice):
    error = error_of(accounts.begin_totp_enrollment, alice.user, "Darkroom")
    assert (error.code, error.status) == ("email_unverified", 403)
    assert alice.user.totp_pending_secret is None


def test_enrolment_refuses_a_wrong_code(db, settings, now, alice):
    enrollment = accounts.begin_totp_enrollment(verified(alice.user), "Darkroom")
    valid = {pyotp.TOTP(enrollment["secret"]).at(now + timedelta(seconds=d)) for d in (-30, 0, 30)}
    wrong = next(f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in valid)
    error = error_of(accounts.confirm_totp_enrollment, alice.user, wrong, now)
    assert (error.code, error.status) == ("invalid_totp", 400)
    assert not alice.user.totp_enabled


# ---------------------------------------------------------------- authenticate


def test_authenticate_by_token_and_by_key_touching_at_most_once_a_minute(db, settings, now, alice):
    result = login(db, settings, now)
    user, kind, credential = sessions.authenticate(db, result.token, None, now)
    assert (user.id, kind, credential.id) == (alice.user.id, "session", result.session.id)
    assert credential.last_used_at == now
    sessions.authenticate(db, result.token, None, now + timedelta(seconds=59))
    assert credential.last_used_at == now
    sessions.authenticate(db, result.token, None, now + timedelta(seconds=60))
    assert credential.last_used_at == now + timedelta(seconds=60)

    created = keys.create(db, verified(alice.user), "ci", now)
    user, kind, key = sessions.authenticate(db, None, created["key"], now)
    assert (kind, key.id) == ("api_key", created["id"])
    principal = sessions.principal(user, kind, key)
    assert principal["credential_type"] == "api_key" and principal["plan"] == "free"


def test_only_verified_accounts_that_are_not_admins_get_and_use_api_keys(db, settings, now, alice):
    error = error_of(keys.create, db, alice.user, "ci", now)
    assert (error.code, error.status) == ("email_unverified", 403)
    created = keys.create(db, verified(alice.user), "ci", now)
    alice.user.is_admin = True
    error = error_of(keys.create, db, alice.user, "another", now)
    assert (error.code, error.status) == ("admin_api_keys_refused", 403)
    # a key that exists anyway (made before the grant, or before verification
    # by an earlier version) authenticates nobody
    error = error_of(sessions.authenticate, db, None, created["key"], now)
    assert (error.code, error.status) == ("unauthenticated", 401)
    alice.user.is_admin, alice.user.email_verified = False, False
    assert error_of(sessions.authenticate, db, None, created["key"], now).code == "unauthenticated"


def test_an_api_key_sent_as_the_bearer_token_is_resolved_as_the_key(db, settings, now, alice):
    # OpenAI-style clients send `Authorization: Bearer <key>`: the gateway
    # passes it on as the token, and the key's prefix says what it is
    created = keys.create(db, verified(alice.user), "sdk", now)
    user, kind, key = sessions.authenticate(db, created["key"], None, now)
    assert (user.id, kind, key.id) == (alice.user.id, "api_key", created["id"])
    keys.revoke(db, alice.user, created["id"], now)
    assert error_of(sessions.authenticate, db, created["key"], None, now).status == 401
    # an administrator's key is refused as a bearer token too
    other = keys.create(db, alice.user, "again", now)
    alice.user.is_admin = True
    error = error_of(sessions.authenticate, db, other["key"], None, now)
    assert (error.code, error.status) == ("unauthenticated", 401)
    # a session token is never taken for a key
    alice.user.is_admin = False
    token = login(db, settings, now).token
    assert sessions.authenticate(db, token, None, now)[1] == "session"


@pytest.mark.parametrize(("token", "api_key"), [(None, None), ("drs_x", "drk_x")])
def test_authenticate_needs_exactly_one_credential(db, now, token, api_key):
    error = error_of(sessions.authenticate, db, token, api_key, now)
    assert (error.code, error.status) == ("invalid_request", 400)


def test_expired_revoked_and_unknown_credentials_are_unauthenticated(db, settings, now, alice):
    result = login(db, settings, now)
    expired = now + timedelta(days=7)
    for token, api_key, at in [
        (result.token, None, expired),
        ("drs_unknown", None, now),
        (None, "drk_abcdefgh_" + "x" * 43, now),
        (None, "garbage", now),
    ]:
        error = error_of(sessions.authenticate, db, token, api_key, at)
        assert (error.code, error.status) == ("unauthenticated", 401)
    sessions.revoke(db, str(result.session.id), now, user=alice.user)
    assert error_of(sessions.authenticate, db, result.token, None, now).code == "unauthenticated"


# ---------------------------------------------------------------- keys and sessions


def test_keys_are_listed_newest_first_and_limited(db, settings, now, alice):
    keys.create(db, verified(alice.user), "default", now)
    for i in range(keys.MAX_ACTIVE_KEYS - 1):
        keys.create(db, alice.user, f"k{i}", now + timedelta(seconds=i + 1))
    listed, next_cursor = keys.list_active(db, alice.user, 20, None)
    assert [k.name for k in listed[:2]] == ["k18", "k17"] and listed[-1].name == "default"
    assert next_cursor is None
    # pages of 8 walk the same list, newest first, without gaps or repeats
    pages, cursor = [], None
    while True:
        page, cursor = keys.list_active(db, alice.user, 8, cursor)
        pages.append([k.name for k in page])
        if cursor is None:
            break
    assert [len(p) for p in pages] == [8, 8, 4]
    assert sum(pages, []) == [k.name for k in listed]
    error = error_of(keys.create, db, alice.user, "one too many", now)
    assert (error.code, error.status) == ("too_many_keys", 409)
    keys.revoke(db, alice.user, str(listed[0].id), now)
    assert keys.create(db, alice.user, "replacement", now)["name"] == "replacement"


def test_another_users_key_or_session_is_not_found(db, settings, now, alice):
    bob = accounts.register(db, settings, "bob@example.com", PASSWORD, None, None, now)
    bob_key = keys.create(db, verified(bob.user), "default", now)
    bob_session = login(db, settings, now, email="bob@example.com").session
    for key_id in [bob_key["id"], uuid.uuid4(), "not-a-uuid"]:
        assert error_of(keys.revoke, db, alice.user, str(key_id), now).code == "not_found"
    error = error_of(sessions.revoke, db, str(bob_session.id), now, user=alice.user)
    assert error.code == "not_found"
    assert db.get(ApiKey, bob_key["id"]).revoked_at is None


# ---------------------------------------------------------------- password reset


def opened(settings, sealed: str) -> str:
    return settings.sealer.open(sealed)


def test_password_reset_revokes_every_session_and_api_key(db, settings, now, alice):
    session = login(db, settings, now).session
    key = keys.create(db, verified(alice.user), "ci", now)
    event = accounts.request_password_reset(db, settings, "alice@example.com", now)
    assert event["expires_at"] == (now + timedelta(minutes=60)).isoformat().replace("+00:00", "Z")
    token = opened(settings, event["sealed_token"])
    assert token not in str(event)  # the event carries the token sealed only
    # within a minute: no second mail
    assert accounts.request_password_reset(db, settings, "alice@example.com", now) is None
    weak = error_of(accounts.confirm_password_reset, db, token, "password123", now)
    assert weak.code == "weak_password"
    changed = accounts.confirm_password_reset(db, token, "a brand new passphrase", now)
    assert changed == {"user_id": str(alice.user.id), "email": "alice@example.com",
                       "changed_at": now.isoformat().replace("+00:00", "Z"),
                       "sessions": 1, "api_keys": 1}
    db.refresh(session)
    assert session.revoked_at == now
    assert db.get(ApiKey, key["id"]).revoked_at == now
    assert error_of(sessions.authenticate, db, None, key["key"], now).code == "unauthenticated"
    again = error_of(accounts.confirm_password_reset, db, token, "another passphrase", now)
    assert again.code == "invalid_token"
    assert login(db, settings, now, password="a brand new passphrase").token


def test_a_sealed_secret_opens_only_with_the_key(settings):
    from services.common.sealed import Sealer, UnreadableSecret

    sealed = settings.sealer.seal("123456")
    assert "123456" not in sealed and sealed != settings.sealer.seal("123456")  # random IV
    assert Sealer(f"a-new-key,{MAIL_SECRETS_KEY}").open(sealed) == "123456"  # rotation
    with pytest.raises(UnreadableSecret):
        Sealer("another-key").open(sealed)
    with pytest.raises(UnreadableSecret):
        settings.sealer.open(sealed[:-4] + "AAAA")  # altered


def test_a_new_reset_token_voids_the_earlier_one_and_tokens_expire(db, settings, now, alice):
    first = accounts.request_password_reset(db, settings, "alice@example.com", now)
    later = now + timedelta(minutes=1)
    second = accounts.request_password_reset(db, settings, "alice@example.com", later)
    error = error_of(accounts.confirm_password_reset, db, opened(settings, first["sealed_token"]),
                     "a new passphrase!", later)
    assert error.code == "invalid_token"
    expired = later + timedelta(minutes=60)
    error = error_of(accounts.confirm_password_reset, db, opened(settings, second["sealed_token"]),
                     "a new passphrase!", expired)
    assert error.code == "invalid_token"
    assert accounts.request_password_reset(db, settings, "nobody@example.com", now) is None


# ---------------------------------------------------------------- admin


def test_set_admin_enrols_totp_and_ends_sessions(db, settings, now, alice):
    session = login(db, settings, now).session
    result = accounts.set_admin(db, settings, " Alice@Example.com", True, now)
    assert result["is_admin"] and result["otpauth_uri"].startswith("otpauth://totp/Darkroom:")
    assert alice.user.totp_enabled
    db.refresh(session)
    assert session.revoked_at == now
    # granting again does not enrol again; withdrawing keeps TOTP
    assert accounts.set_admin(db, settings, "alice@example.com", True, now)["otpauth_uri"] is None
    assert accounts.set_admin(db, settings, "alice@example.com", False, now)["is_admin"] is False
    assert alice.user.totp_enabled
    assert error_of(accounts.set_admin, db, settings, "no@example.com", True, now).code == (
        "not_found"
    )


@pytest.mark.parametrize("grant", [True, False], ids=["grant", "withdraw"])
def test_granting_or_withdrawing_admin_revokes_the_api_keys(db, settings, now, alice, grant):
    made = [keys.create(db, verified(alice.user), f"k{i}", now) for i in range(2)]
    alice.user.is_admin = not grant  # withdrawing: keys an admin kept from an earlier version
    result = accounts.set_admin(db, settings, "alice@example.com", grant, now)
    assert (result["is_admin"], result["api_keys_revoked"]) == (grant, 2)
    assert [db.get(ApiKey, k["id"]).revoked_at for k in made] == [now, now]


# ---------------------------------------------------------------- email change


def change_email(db, settings, now, user, new_email, password=PASSWORD, ip=IP):
    """As the service's request_email_change: verified only, the attempt taken first."""
    from services.auth import lookup

    lookup.ensure_verified(user)
    subjects = like_the_service(db, sessions.begin_login, db, settings, user.email, ip, now)
    like_the_service(db, sessions.check_password, db, user, password, subjects, now,
                     invalid_credentials(status=403))
    return like_the_service(db, accounts.request_email_change, db, settings, user, new_email, now)


def test_an_unverified_account_cannot_change_its_address(db, settings, now, alice):
    error = error_of(change_email, db, settings, now, alice.user, "new@example.com")
    assert (error.code, error.status) == ("email_unverified", 403)
    assert attempts(db) == {}  # refused before an attempt was taken


def test_wrong_passwords_for_an_email_change_count_toward_the_lockout(db, settings, now, alice):
    verified(alice.user)
    db.commit()
    for _ in range(3):
        error = error_of(change_email, db, settings, now, alice.user, "new@example.com", "nope nope")
        assert (error.code, error.status) == ("invalid_credentials", 403)
    # the account is locked: for logins, and for the change with the right password
    assert error_of(login, db, settings, now).code == "rate_limited"
    assert error_of(change_email, db, settings, now, alice.user, "new@example.com").code == (
        "rate_limited")
    later = now + timedelta(seconds=300)
    event = change_email(db, settings, later, alice.user, "new@example.com")
    assert (event["purpose"], event["email"]) == ("email_change", "new@example.com")


def test_a_right_password_with_a_refused_change_does_not_count(db, settings, now, alice):
    verified(alice.user)
    accounts.register(db, settings, "bob@example.com", PASSWORD, None, None, now)
    db.commit()
    for _ in range(4):  # more than the account's 3
        error = error_of(change_email, db, settings, now, alice.user, "bob@example.com")
        assert error.code == "email_taken"
    assert login(db, settings, now).token
