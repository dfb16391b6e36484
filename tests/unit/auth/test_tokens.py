from __future__ import annotations

import re

from services.auth import tokens


def test_session_tokens_are_prefixed_random_and_distinct():
    values = {tokens.new_session_token() for _ in range(50)}
    assert len(values) == 50
    for value in values:
        assert re.fullmatch(r"drs_[A-Za-z0-9_-]{43}", value)


def test_api_keys_carry_their_prefix_which_can_be_read_back():
    prefix, key = tokens.new_api_key()
    assert re.fullmatch(r"[a-z0-9]{8}", prefix)
    assert key.startswith(f"drk_{prefix}_")
    assert len(key) == len("drk_") + 8 + 1 + 43
    assert tokens.api_key_prefix(key) == prefix


def test_malformed_api_keys_have_no_prefix():
    for key in ["", "drk_", "drk_short_x", "drs_abcdefgh_" + "x" * 43, "drk_ABCDEFGH_" + "x" * 43]:
        assert tokens.api_key_prefix(key) is None


def test_verification_codes_are_six_digits():
    codes = [tokens.new_verification_code() for _ in range(200)]
    assert all(re.fullmatch(r"\d{6}", code) for code in codes)
    assert len(set(codes)) > 150


def test_sha256_is_hex_and_deterministic():
    assert tokens.sha256_hex("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_code_digest_depends_on_key_row_and_code():
    base = tokens.code_digest(b"k1", "row-1", "123456")
    assert base == tokens.code_digest(b"k1", "row-1", "123456")
    assert base != tokens.code_digest(b"k2", "row-1", "123456")
    assert base != tokens.code_digest(b"k1", "row-2", "123456")
    assert base != tokens.code_digest(b"k1", "row-1", "123457")
    assert "123456" not in base


def test_keyed_digests_are_separated_by_purpose():
    assert tokens.keyed_digest(b"k", "a", "x") != tokens.keyed_digest(b"k", "b", "x")
    # parts are delimited: ("ab", "c") is not ("a", "bc")
    assert tokens.keyed_digest(b"k", "p", "ab", "c") != tokens.keyed_digest(b"k", "p", "a", "bc")


def test_digests_equal():
    assert tokens.digests_equal("abc", "abc")
    assert not tokens.digests_equal("abc", "abd")


def test_bearer_credentials_are_told_apart_by_their_prefix():
    assert tokens.is_api_key(tokens.new_api_key()[1])
    assert not tokens.is_api_key(tokens.new_session_token())
    assert not tokens.is_api_key("forged-token")
