"""What operators do to accounts (services/auth/operators.py), domain-level:
finding by id or address, listing, disabling (sign-in refused after the
right password only, the attempt given back), revoking keys by id, prefix
or user."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from services.auth import accounts, keys, operators, sessions
from services.auth.models import ApiKey, Throttle
from services.common.errors import DomainError
from tests.unit.auth.test_accounts import IP, PASSWORD, error_of, login, verified


@pytest.fixture
def alice(db, settings, now):
    user = verified(accounts.register(db, settings, "alice@example.com", PASSWORD, "Alice", IP,
                                      now).user)
    db.commit()
    return user


def test_find_by_id_or_address(db, alice):
    assert operators.find(db, str(alice.id)) is alice
    assert operators.find(db, "  Alice@Example.COM ") is alice
    assert error_of(operators.find, db, "bob@example.com").code == "not_found"
    assert error_of(operators.find, db, " ").code == "invalid_request"


def test_list_filters_by_address(db, settings, now, alice):
    accounts.register(db, settings, "bob@example.org", PASSWORD, "Bob", IP, now)
    rows, cursor = operators.list_users(db, "EXAMPLE.ORG", 10, None)
    assert [u.email for u in rows] == ["bob@example.org"] and cursor is None
    rows, cursor = operators.list_users(db, "%", 10, None)  # a LIKE wildcard is a character
    assert rows == []


def test_disabled_login_is_refused_after_the_right_password_only(db, settings, now, alice):
    login(db, settings, now)
    keys.create(db, alice, "ci", now)
    changed = operators.set_disabled(db, alice, True, now)
    db.commit()
    assert (changed["sessions_revoked"], changed["api_keys_revoked"]) == (1, 1)
    view = operators.view(db, alice, now)
    assert view["disabled_at"] == now and (view["sessions_active"], view["api_keys_active"]) == (0, 0)

    def counted():
        return {t.subject: t.attempts for t in db.scalars(select(Throttle)) if t.attempts}

    before = counted()
    error = error_of(login, db, settings, now)
    assert (error.code, error.status) == ("account_disabled", 403)
    # the right password was no guess: the attempt is given back
    assert counted() == before
    assert error_of(login, db, settings, now, password="wrong password!").code \
        == "invalid_credentials"

    # a credential made behind the operator's back authenticates nobody either
    late = keys.create(db, alice, "late", now)
    assert error_of(sessions.authenticate, db, None, late["key"], now).code == "unauthenticated"

    operators.set_disabled(db, alice, False, now)
    db.commit()
    assert login(db, settings, now).session.user_id == alice.id
    assert sessions.authenticate(db, None, late["key"], now)[0] is alice


def test_revoke_keys_needs_one_selector_and_finds_live_keys(db, now, alice):
    made = [keys.create(db, alice, f"k{i}", now) for i in range(3)]
    for selector in ({}, {"key_id": made[0]["id"], "prefix": made[0]["prefix"]}):
        assert error_of(operators.revoke_keys, db, selector, now).code == "invalid_request"
    [one] = operators.revoke_keys(db, {"prefix": made[0]["key"]}, now)  # the whole key
    assert one.id == made[0]["id"]
    assert error_of(operators.revoke_keys, db, {"key_id": made[0]["id"]}, now).code \
        == "not_found"  # not live any more
    [two] = operators.revoke_keys(db, {"prefix": f"drk_{made[1]['prefix']}"}, now)
    assert two.id == made[1]["id"]
    assert [k.id for k in operators.revoke_keys(db, {"user": "alice@example.com"}, now)] \
        == [made[2]["id"]]
    assert operators.revoke_keys(db, {"user": str(alice.id)}, now) == []


def test_a_prefix_two_live_keys_share_is_ambiguous(db, now, alice):
    made = [keys.create(db, alice, f"k{i}", now) for i in range(2)]
    for key in db.scalars(select(ApiKey)):
        key.prefix = "samesame"
    with pytest.raises(DomainError) as info:
        operators.revoke_keys(db, {"prefix": "drk_samesame"}, now)
    assert info.value.code == "ambiguous_prefix" and info.value.status == 409
    assert sorted(info.value.details["key_ids"]) == sorted(str(k["id"]) for k in made)


# ------------------------------------------------------------ who may operate (the HTTP API)


def test_only_an_enabled_administrator_may_operate(db, settings, now, alice):
    def refused(user_id) -> tuple[int, str]:
        error = error_of(operators.require_operator, db, user_id)
        return error.status, error.code

    # an unknown account, a malformed id, nothing: the same answer
    for nobody in (str(uuid.uuid4()), "not-an-id", None, 7):
        assert refused(nobody) == (403, "admin_required")
    assert refused(str(alice.id)) == (403, "admin_required")  # not an administrator
    accounts.set_admin(db, settings, "alice@example.com", True, now)
    db.commit()
    assert operators.require_operator(db, str(alice.id)) is alice
    operators.set_disabled(db, alice, True, now)  # disabled: no longer
    assert refused(str(alice.id)) == (403, "admin_required")


def test_an_operator_does_not_disable_their_own_account(db, settings, now, alice):
    bob = accounts.register(db, settings, "bob@example.org", PASSWORD, "Bob", IP, now).user
    db.commit()
    error = error_of(operators.check_not_self, alice, alice, True)
    assert (error.status, error.code) == (409, "cannot_disable_self")
    operators.check_not_self(alice, alice, False)  # enabling oneself: nothing to refuse
    operators.check_not_self(alice, bob, True)
