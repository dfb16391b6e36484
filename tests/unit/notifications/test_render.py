"""Mail templates: subjects, bodies, the code and the reset link."""

from __future__ import annotations

import email
import email.policy
import re
import uuid
from datetime import UTC, datetime

import pytest
from jinja2 import UndefinedError

from services.common.errors import NonRetryable
from services.common.sealed import Sealer
from services.notifications.notify import template_context
from services.notifications.render import build_message, format_utc, render, reset_url

SETTINGS = {"APP_BASE_URL": "https://app.example/", "FROM": "Darkroom <no-reply@mail.example>"}
EXPIRES = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


SEALER = Sealer("unit-test-mail-secrets-key")


def event(**fields) -> dict:
    """The event as auth publishes it: a ``code`` or ``token`` given here travels sealed."""
    for plain, sealed in (("code", "sealed_code"), ("token", "sealed_token")):
        if plain in fields:
            fields[sealed] = SEALER.seal(fields.pop(plain))
    return {"event_id": uuid.uuid4(), "user_id": uuid.uuid4(), "email": "ada@example.com",
            "expires_at": EXPIRES, **fields}


def rendered(template: str, **fields):
    return render(template, template_context(template, event(**fields), SETTINGS, SEALER))


@pytest.mark.parametrize("template, field", [("email_verification", "code"),
                                             ("password_reset", "token")])
def test_a_secret_sealed_under_another_key_is_dead_lettered_at_once(template, field):
    sealed = event(**{field: "123456"})
    with pytest.raises(NonRetryable) as info:
        template_context(template, sealed, SETTINGS, Sealer("not auth's key"))
    assert "123456" not in str(info.value)


def test_password_changed_mail_says_what_was_revoked():
    mail = rendered("password_changed", changed_at=EXPIRES, sessions=2, api_keys=3)
    assert mail.subject == "Your Darkroom password was changed"
    assert "2026-03-04 05:06 UTC" in mail.text and "(2 sessions," in mail.text
    assert "3 API keys" in mail.text and "https://app.example" in mail.text


def test_signup_attempted_mail_tells_the_owner_and_how_to_take_the_account_back():
    mail = rendered("signup_attempted", attempted_at=EXPIRES)
    assert mail.subject == "Someone tried to sign up to Darkroom with your address"
    assert "ada@example.com at 2026-03-04 05:06 UTC" in mail.text
    assert "resetting its password makes it yours" in " ".join(mail.text.split())


def first_code(text: str) -> str:
    return re.search(r"\b(\d{6})\b", text).group(1)


@pytest.mark.parametrize("purpose, subject", [
    ("registration", "Verify your Darkroom email address"),
    ("email_change", "Confirm your new Darkroom email address"),
])
def test_verification_mail_carries_the_code_first(purpose, subject):
    mail = rendered("email_verification", code="042917", purpose=purpose)
    assert mail.subject == subject
    assert first_code(mail.text) == "042917"
    assert "042917" in mail.html
    assert "2026-03-04 05:06 UTC" in mail.text
    assert "042917" not in mail.subject  # subjects are stored; codes never are
    assert ("ada@example.com" in mail.text) == (purpose == "email_change")


def test_reset_mail_link_ends_with_the_token():
    token = "Ab_c-123" * 6
    mail = rendered("password_reset", token=token)
    links = re.findall(r"https?://\S+", mail.text)
    assert links == [f"https://app.example/reset-password?token={token}"]
    assert links[0].endswith(f"?token={token}")
    assert f'href="https://app.example/reset-password?token={token}"' in mail.html
    assert token not in mail.subject


def test_reset_url_quotes_what_would_break_the_query():
    assert reset_url("http://h/", "a b&c") == "http://h/reset-password?token=a%20b%26c"


def test_suspicious_login_mail_names_network_agent_and_time():
    mail = rendered("suspicious_login", network="203.0.113.0/24", user_agent="Firefox <b>",
                    login_at=datetime(2026, 1, 2, 3, 4, tzinfo=UTC))
    assert mail.subject == "New sign-in to your Darkroom account"
    for part in ("203.0.113.0/24", "Firefox <b>", "2026-01-02 03:04 UTC"):
        assert part in mail.text
    assert "Firefox &lt;b&gt;" in mail.html and "Firefox <b>" not in mail.html


def test_unknown_user_agent_is_said_so():
    mail = rendered("suspicious_login", network="198.51.100.0/24", user_agent=None,
                    login_at=EXPIRES)
    assert "Device:  unknown" in mail.text


def test_a_missing_variable_is_an_error_not_a_blank():
    with pytest.raises(UndefinedError):
        render("password_reset", {"email": "ada@example.com", "expires_at": EXPIRES})


def test_format_utc_converts_to_utc():
    from datetime import timedelta, timezone

    assert format_utc(datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))) == "2026-01-01 10:00 UTC"
    assert format_utc("2026-01-01T10:00:00Z") == "2026-01-01 10:00 UTC"


def test_message_is_multipart_and_readable_raw():
    mail = rendered("password_reset", token="t" * 120)
    message = build_message(mail, sender=SETTINGS["FROM"], recipient="ada@example.com",
                            message_key="k1", headers={"X-Darkroom-Template": "password_reset"})
    raw = message.as_bytes()
    # the long link is not folded or quoted-printable in the .eml
    assert b"https://app.example/reset-password?token=" + b"t" * 120 in raw
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["To"] == "ada@example.com"
    assert parsed["Message-ID"] == "<k1@mail.example>"
    assert parsed["X-Darkroom-Template"] == "password_reset"
    assert parsed.get_body(("plain",)).get_content() == mail.text
    assert parsed.get_body(("html",)).get_content() == mail.html


def test_non_ascii_bodies_are_utf8():
    mail = rendered("suspicious_login", network="x", user_agent="Navigateur élégant", login_at=EXPIRES)
    message = build_message(mail, sender="Darkroom <no-reply@mail.example>", recipient="ada@example.com",
                            message_key="k2")
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert "Navigateur élégant" in parsed.get_body(("plain",)).get_content()
