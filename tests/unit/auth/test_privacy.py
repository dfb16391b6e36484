"""The auth service's part of privacy requests: every credential revoked at
once, the export (nothing secret in it), the erasure (every row, the
address free to register again), the restriction flag, the schedule."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import func, select

from services.auth import accounts, keys, sessions
from services.auth import privacy as privacy_data
from services.auth.errors import RecordedFailure
from services.auth.models import (
    ApiKey,
    EmailVerification,
    KnownNetwork,
    Throttle,
    User,
    UserSession,
)
from services.common.errors import DomainError

PASSWORD = "correct horse battery"
IP = "203.0.113.10"


@pytest.fixture
def alice(db, settings, now):
    created = accounts.register(db, settings, "alice@example.com", PASSWORD, "Alice", IP, now)
    db.commit()
    return created


def login(db, settings, now, password=PASSWORD):
    subjects = sessions.begin_login(db, settings, "alice@example.com", IP, now)
    return sessions.login(db, settings, subjects, "alice@example.com", password, None, IP,
                          "pytest/1", now)


def verified_key(db, alice, now) -> dict:
    alice.user.email_verified = True
    return keys.create(db, alice.user, "default", now)


def count(db, model, *where) -> int:
    return db.scalar(select(func.count()).select_from(model).where(*where))


def test_revoking_all_ends_every_session_and_key_at_once(db, settings, now, alice):
    result = login(db, settings, now)
    api_key = verified_key(db, alice, now)
    db.commit()
    user_id = alice.user.id
    assert privacy_data.revoke_all(db, user_id, now) == {"sessions": 1, "api_keys": 1}
    db.commit()
    for token, key in ((result.token, None), (None, api_key["key"])):
        with pytest.raises(DomainError) as info:
            sessions.authenticate(db, token, key, now)
        assert info.value.status == 401
    assert privacy_data.revoke_all(db, user_id, now) == {"sessions": 0, "api_keys": 0}


def test_the_export_holds_the_account_and_nothing_secret(db, settings, now, alice):
    login(db, settings, now)
    api_key = verified_key(db, alice, now)
    db.commit()
    data = privacy_data.export(db, settings, alice.user.id)
    assert data["account"]["email"] == "alice@example.com"
    assert data["account"]["two_factor_enabled"] is False
    assert len(data["sessions"]) == 1 and data["sessions"][0]["network"] == "203.0.113.0/24"
    assert [k["prefix"] for k in data["api_keys"]] == [api_key["prefix"]]
    assert [v["purpose"] for v in data["email_verifications"]] == ["registration"]
    assert data["known_networks"]["count"] == 1
    text = json.dumps(data)
    user = db.get(User, alice.user.id)
    secrets = [user.password_hash, api_key["key"],
               *db.scalars(select(UserSession.token_hash)), *db.scalars(select(ApiKey.key_hash)),
               *db.scalars(select(EmailVerification.code_hmac)),
               *db.scalars(select(KnownNetwork.network_hmac))]
    assert not [s for s in secrets if s in text]
    assert {w["what"] for w in privacy_data.WITHHELD} >= {"your password"}
    assert privacy_data.export(db, settings, uuid.uuid4()) == {"account": None}


def test_erasure_deletes_every_row_and_frees_the_address(db, settings, now, alice):
    login(db, settings, now)
    verified_key(db, alice, now)
    with pytest.raises((DomainError, RecordedFailure)):
        login(db, settings, now, password="wrong")
    db.commit()
    bob = accounts.register(db, settings, "bob@example.com", PASSWORD, "Bob", IP, now)
    bob.user.email_verified = True
    keys.create(db, bob.user, "default", now)
    db.commit()
    erased = privacy_data.erase(db, settings, alice.user.id, now)
    tables = erased.tables
    db.commit()
    assert erased.also_named == ("alice@example.com",)  # its dead letters are found by it too
    assert tables["users"] == 1 and tables["sessions"] == 1 and tables["api_keys"] == 1
    assert tables["email_verifications"] == 1 and tables["known_networks"] == 1
    assert tables["throttles"] == 1  # the attempts counted against the address
    for model in (UserSession, ApiKey, EmailVerification, KnownNetwork):
        assert count(db, model, model.user_id == alice.user.id) == 0
    assert db.get(User, alice.user.id) is None
    assert db.get(User, bob.user.id) is not None and count(db, ApiKey) == 1
    assert count(db, Throttle) == 1  # the client address's subject is not the account's
    again = accounts.register(db, settings, "alice@example.com", PASSWORD, None, IP, now)
    assert again.user.id != alice.user.id
    # a second erasure finds nothing
    again = privacy_data.erase(db, settings, alice.user.id, now)
    assert set(again.tables.values()) == {0} and again.also_named == ()


def test_the_restriction_flag_mirrors_the_privacy_service(db, settings, now, alice):
    assert privacy_data.set_restricted(db, alice.user.id, True) is True
    db.commit()
    db.expire_all()
    assert db.get(User, alice.user.id).processing_restricted is True
    assert privacy_data.set_restricted(db, uuid.uuid4(), True) is False


def test_the_schedule_is_read_from_the_settings(settings):
    items = {i["data"]: i for i in privacy_data.retention_items(settings)}
    assert items["sessions"]["days"] == 7
    assert items["failed sign-in attempts (keyed hashes of address and network)"]["kept"] == \
        f"{settings.login_failure_window.total_seconds():g} seconds"


def test_the_export_holds_the_history_of_rectifications_and_erasure_removes_it(
        db, settings, now, alice):
    from datetime import timedelta

    from services.auth import verification
    from services.auth.models import AccountChange

    user = db.get(User, alice.user.id)
    accounts.update_profile(db, user, {"display_name": "Alice B.", "bio": None}, now)
    accounts.update_profile(db, user, {"display_name": "Alice B."}, now)  # no change: no entry
    user.email_verified = True
    event = accounts.request_email_change(db, settings, user, "alice@new.example", now)
    db.commit()
    verification.verify(db, settings, "alice@new.example", settings.sealer.open(event["sealed_code"]),
                        now + timedelta(minutes=1))
    db.commit()
    changes = privacy_data.export(db, settings, alice.user.id)["changes"]
    assert [c["kind"] for c in changes] == ["profile_updated", "email_changed"]
    assert changes[0]["changes"] == {"display_name": {"from": "Alice", "to": "Alice B."}}
    assert changes[1]["changes"] == {"email": {"from": "alice@example.com",
                                               "to": "alice@new.example"}}
    assert privacy_data.erase(db, settings, alice.user.id, now).tables["account_changes"] == 2
    db.commit()
    assert count(db, AccountChange) == 0


def test_identities_and_the_age_fact_are_exported_and_erased(db, settings, now):
    from datetime import timedelta

    from services.auth.models import Identity, OidcCode, OidcFlow

    created = accounts.register(db, settings, "bob@example.com", PASSWORD, None, IP, now,
                                minimum_age_met=True)
    uid = created.user.id
    db.add_all([
        Identity(user_id=uid, provider="google", subject="g-123", email="bob@example.com",
                 email_verified=True, created_at=now),
        OidcFlow(state_hash="h", provider="google", nonce="n", code_verifier="v",
                 redirect_uri="http://app.test/", user_id=uid, created_at=now,
                 expires_at=now + timedelta(minutes=5)),
        OidcCode(code_hash="c", user_id=uid, provider="google", subject="g-123",
                 email="bob@example.com", created_at=now, expires_at=now + timedelta(minutes=2)),
    ])
    db.commit()
    exported = privacy_data.export(db, settings, uid)
    assert exported["identities"] == [{
        "id": exported["identities"][0]["id"], "provider": "google", "subject": "g-123",
        "email": "bob@example.com", "email_verified": True,
        "created_at": exported["identities"][0]["created_at"]}]
    assert exported["account"]["minimum_age_met_at"] is not None
    assert exported["account"]["has_password"] is True
    erased = privacy_data.erase(db, settings, uid, now)
    db.commit()
    assert (erased.tables["identities"], erased.tables["oidc_flows"],
            erased.tables["oidc_codes"]) == (1, 1, 1)
    assert count(db, Identity) == count(db, OidcFlow) == count(db, OidcCode) == 0
