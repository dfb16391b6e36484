from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from services.auth import passwords
from services.common.contracts import load_rpc
from services.common.contracts.auth import Register, normalise_email
from services.common.errors import DomainError


def policy_error(password: str, email: str = "alice.smith@example.com") -> DomainError:
    with pytest.raises(DomainError) as info:
        passwords.check_policy(password, email)
    return info.value


@pytest.mark.parametrize("password", ["correct horse battery", "Tr0ub4dor&3xyz", "a" * 128])
def test_acceptable_passwords_pass(password):
    passwords.check_policy(password, "alice.smith@example.com")


@pytest.mark.parametrize("password", ["short", "x" * 9, "x" * 129])
def test_length_outside_10_to_128_is_weak(password):
    error = policy_error(password)
    assert (error.code, error.status) == ("weak_password", 400)


@pytest.mark.parametrize(
    "password", ["alice.smith", "ALICE.SMITH", "my-alice.smith-pw", "xxAlice.Smith2024"]
)
def test_password_equal_to_or_containing_the_local_part_is_weak(password):
    error = policy_error(password)
    assert error.code == "weak_password"
    assert "email" in error.details["fields"]["password"][0]


def test_a_very_short_local_part_is_only_refused_when_it_is_the_whole_password():
    passwords.check_policy("jo jo jo jo jo", "jo@example.com")
    assert policy_error("jojojojojo", "jojojojojo@example.com").code == "weak_password"


@pytest.mark.parametrize("password", ["password123", "Password123", "QWERTYUIOP", "1234567890"])
def test_common_passwords_are_weak_whatever_their_case(password):
    error = policy_error(password)
    assert error.code == "weak_password"
    assert error.details["fields"]["password"] == ["is too common"]


def test_hash_is_argon2id_with_owasp_parameters_and_verifies():
    hashed = passwords.hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert passwords.verify_password(hashed, "correct horse battery")
    assert not passwords.verify_password(hashed, "correct horse batterY")
    assert not passwords.needs_rehash(hashed)


def test_hash_made_with_other_parameters_needs_rehash():
    weaker = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    old = weaker.hash("correct horse battery")
    assert passwords.verify_password(old, "correct horse battery")
    assert passwords.needs_rehash(old)


def test_garbage_hash_never_verifies():
    assert not passwords.verify_password("not-a-hash", "anything at all")
    assert passwords.needs_rehash("not-a-hash")


def test_dummy_verification_runs_without_error():
    passwords.burn_dummy_verification("whatever password")


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("  Alice@Example.COM \n", "alice@example.com"),
        ("Ａｌｉｃｅ@example.com", "alice@example.com"),  # fullwidth letters (NFKC)
        ("bob@example.com", "bob@example.com"),
    ],
)
def test_email_normalisation(raw, normal):
    assert normalise_email(raw) == normal


def test_request_schemas_normalise_the_email_before_validating_it():
    data = load_rpc(Register, {"email": "  BOB@Example.com ", "password": "long enough pw"})
    assert data["email"] == "bob@example.com"
    with pytest.raises(DomainError) as info:
        load_rpc(Register, {"email": "not an email", "password": "long enough pw"})
    assert info.value.code == "invalid_request"
    assert "email" in info.value.details["fields"]
