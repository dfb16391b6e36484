from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyotp

from services.auth import totp

NOW = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)
# A fixed secret: its codes around NOW are known and pairwise different.
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def code_for(secret: str, when: datetime) -> str:
    return pyotp.TOTP(secret).at(when)


def test_time_step_is_thirty_seconds():
    assert totp.time_step(NOW) == int(NOW.timestamp()) // 30
    assert totp.time_step(NOW + timedelta(seconds=30)) == totp.time_step(NOW) + 1


def test_codes_match_pyotp():
    secret = totp.new_secret()
    assert totp.code_at(secret, totp.time_step(NOW)) == code_for(secret, NOW)


def test_current_code_and_one_step_of_drift_are_accepted():
    secret = totp.new_secret()
    step = totp.time_step(NOW)
    assert totp.matching_step(secret, code_for(secret, NOW), NOW, None) == step
    earlier = NOW - timedelta(seconds=30)
    later = NOW + timedelta(seconds=30)
    assert totp.matching_step(secret, code_for(secret, earlier), NOW, None) == step - 1
    assert totp.matching_step(secret, code_for(secret, later), NOW, None) == step + 1


def test_codes_two_steps_away_are_refused():
    assert code_for(SECRET, NOW - timedelta(seconds=60)) == "835721"
    assert code_for(SECRET, NOW + timedelta(seconds=60)) == "084788"
    assert totp.matching_step(SECRET, "835721", NOW, None) is None
    assert totp.matching_step(SECRET, "084788", NOW, None) is None


def test_wrong_code_is_refused():
    secret = totp.new_secret()
    valid = {code_for(secret, NOW + timedelta(seconds=d)) for d in (-30, 0, 30)}
    wrong = next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in valid)
    assert totp.matching_step(secret, wrong, NOW, None) is None


def test_a_time_step_cannot_be_used_twice_nor_an_older_one_after_it():
    secret = totp.new_secret()
    code = code_for(secret, NOW)
    step = totp.matching_step(secret, code, NOW, None)
    assert totp.matching_step(secret, code, NOW, last_step=step) is None
    previous = code_for(secret, NOW - timedelta(seconds=30))
    assert totp.matching_step(secret, previous, NOW, last_step=step) is None
    following = NOW + timedelta(seconds=30)
    assert totp.matching_step(secret, code_for(secret, following), following, step) == step + 1


def test_provisioning_uri_names_issuer_and_account():
    uri = totp.provisioning_uri(SECRET, "alice@example.com", "Darkroom")
    assert uri.startswith("otpauth://totp/Darkroom:alice%40example.com?")
    assert f"secret={SECRET}" in uri and "issuer=Darkroom" in uri
    assert pyotp.parse_uri(uri).secret == SECRET
