"""Notifications' part of privacy: marketing mail only to accounts that
opted in and are not restricted (each campaign once), the export-ready and
erasure-scheduled mails, the mails recorded in an export and an erasure, and
nothing written for an erased account."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.common.errors import NonRetryable
from services.common.sealed import Sealer
from services.notifications import notify
from services.notifications import privacy as privacy_data
from services.notifications.models import (
    ErasedAccount,
    MarketingPreference,
    Notification,
    processed_events,
)
from services.notifications.render import render
from tests.unit.notifications.test_notify import (  # noqa: F401
    SEALER,
    SETTINGS,
    FakeMailer,
    deliver,
    session,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_marketing_goes_only_to_opted_in_unrestricted_accounts(session):  # noqa: F811
    yes, no, restricted, unknown = (uuid.uuid4() for _ in range(4))
    privacy_data.consent_changed(session, yes, True, NOW)
    privacy_data.consent_changed(session, no, False, NOW)
    privacy_data.consent_changed(session, restricted, True, NOW)
    privacy_data.restriction_changed(session, restricted, True, NOW)
    session.commit()
    assert privacy_data.marketing_allowed(session, [yes, no, restricted, unknown]) == {yes}
    # an older consent event arriving late changes nothing
    assert privacy_data.consent_changed(session, yes, False, NOW - timedelta(minutes=1)) is False
    assert privacy_data.marketing_allowed(session, [yes]) == {yes}
    assert privacy_data.consent_changed(session, yes, False, NOW + timedelta(minutes=1)) is True
    assert privacy_data.marketing_allowed(session, [yes]) == set()


def test_a_campaign_mails_each_user_once(session):  # noqa: F811
    user, campaign = uuid.uuid4(), uuid.uuid4()
    mailer = FakeMailer()
    event = privacy_data.marketing_event(campaign, user, "New styles", "Try them.")
    assert event == privacy_data.marketing_event(campaign, user, "New styles", "Try them.")
    assert event["event_id"] != privacy_data.marketing_event(uuid.uuid4(), user, "x", "y")["event_id"]
    sent = notify.deliver(session, mailer, SETTINGS, "news", event,
                          find_recipient=lambda e: "ada@example.com")
    again = notify.deliver(session, mailer, SETTINGS, "news", event,
                           find_recipient=lambda e: "ada@example.com")
    assert sent is not None and again is None and len(mailer.sent) == 1
    body = mailer.sent[0].get_body(("plain",)).get_content()
    assert mailer.sent[0]["Subject"] == "New styles" and "marketing_email" in body


def test_the_export_ready_mail_says_where_and_until_when():
    request_id = uuid.uuid4()
    mail = render("export_ready", notify.template_context("export_ready", {
        "event_id": uuid.uuid4(), "user_id": uuid.uuid4(), "request_id": request_id,
        "expires_at": NOW, "email": "ada@example.com"}, SETTINGS))
    assert mail.subject == "Your Darkroom data export is ready"
    assert f"http://app.example/privacy/requests/{request_id}" in mail.text
    assert "2026-11-22 12:00 UTC" in mail.text and str(request_id) in mail.html


def test_export_and_erasure_of_a_users_mails_and_preference(session):  # noqa: F811
    ada, bob = uuid.uuid4(), uuid.uuid4()
    mailer = FakeMailer()
    for user in (ada, bob):
        notify.deliver(session, mailer, SETTINGS, "export_ready",
                       {"event_id": uuid.uuid4(), "user_id": user, "request_id": uuid.uuid4(),
                        "expires_at": None}, find_recipient=lambda e: "someone@example.com")
        privacy_data.consent_changed(session, user, True, NOW)
    session.commit()
    data = privacy_data.export(session, None, ada)
    assert [m["template"] for m in data["mails"]] == ["export_ready"]
    assert data["marketing"]["marketing_email"] is True
    assert privacy_data.erase(session, None, ada, NOW).tables == {"notifications": 1, "marketing_preferences": 1}
    session.commit()
    assert session.query(Notification).filter(Notification.user_id == ada).count() == 0
    assert session.get(MarketingPreference, bob) is not None
    assert privacy_data.export(session, None, ada)["mails"] == []


def erasure_scheduled(request_id, token: str, sealer: Sealer = SEALER) -> dict:
    """As privacy publishes it: the cancel token sealed."""
    return {"event_id": uuid.uuid4(), "user_id": uuid.uuid4(), "request_id": request_id,
            "starts_at": NOW + timedelta(hours=72), "sealed_cancel_token": sealer.seal(token)}


def test_the_erasure_scheduled_mail_carries_the_cancel_link(session):  # noqa: F811
    request_id, token = uuid.uuid4(), "tok-en_" + "x" * 36
    mailer = FakeMailer()
    event = erasure_scheduled(request_id, token)
    assert token not in str(event)
    note = deliver(session, mailer, SETTINGS, "erasure_scheduled", event,
                   find_recipient=lambda e: "ada@example.com")
    assert note is not None and note.template == "erasure_scheduled"
    body = mailer.sent[0].get_body(("plain",)).get_content()
    assert f"http://app.example/privacy/requests/{request_id}/cancel?token={token}" in body
    assert "2026-11-25 12:00 UTC" in mailer.sent[0]["Subject"]
    assert token not in note.subject  # the record keeps no token


def test_a_cancel_token_sealed_under_another_key_is_dead_lettered_at_once(session):  # noqa: F811
    token = "tok-en_" + "y" * 36
    event = erasure_scheduled(uuid.uuid4(), token, Sealer("not privacy's key"))
    mailer = FakeMailer()
    with pytest.raises(NonRetryable) as info:
        deliver(session, mailer, SETTINGS, "erasure_scheduled", event,
                find_recipient=lambda e: "ada@example.com")
    assert token not in str(info.value) and mailer.sent == []


def test_nothing_is_written_for_an_erased_account(session):  # noqa: F811
    ada = uuid.uuid4()
    mailer = FakeMailer()
    privacy_data.consent_changed(session, ada, True, NOW)
    session.commit()
    assert privacy_data.erase(session, None, ada, NOW).tables == {"notifications": 0, "marketing_preferences": 1}
    session.commit()
    # late events of the erased account: a receipt, a sign-in warning (it carries the
    # address), a consent and a restriction change
    receipt = {"event_id": uuid.uuid4(), "user_id": ada, "request_id": uuid.uuid4(),
               "expires_at": None}
    assert notify.deliver(session, mailer, SETTINGS, "export_ready", receipt,
                          find_recipient=lambda e: "ada@example.com") is None
    warning = {"event_id": uuid.uuid4(), "user_id": ada, "email": "ada@example.com",
               "network": "10.0.0.0/24", "user_agent": None, "login_at": NOW}
    assert notify.deliver(session, mailer, SETTINGS, "suspicious_login", warning) is None
    assert privacy_data.consent_changed(session, ada, True, NOW + timedelta(minutes=1)) is False
    assert privacy_data.restriction_changed(session, ada, True, NOW + timedelta(minutes=1)) is False
    session.commit()
    assert mailer.sent == []
    assert session.query(Notification).count() == 0
    assert session.query(MarketingPreference).count() == 0
    assert session.query(processed_events).count() == 0
    # the digest says nothing about the person
    (erased,) = session.query(ErasedAccount).all()
    assert str(ada) not in erased.subject
    # other accounts are mailed as before
    assert notify.deliver(session, mailer, SETTINGS, "suspicious_login",
                          {**warning, "event_id": uuid.uuid4(), "user_id": uuid.uuid4()})


def test_the_breach_notice_says_what_happened_and_what_to_do():
    incident_id = uuid.uuid4()
    mail = render("breach_notice", notify.template_context("breach_notice", {
        "event_id": uuid.uuid4(), "user_id": uuid.uuid4(), "incident_id": incident_id,
        "summary": "a backup <copy> was exposed", "categories": ["account", "images"],
        "detected_at": NOW, "email": "ada@example.com"}, SETTINGS))
    assert mail.subject == "Important: a security incident affected your Darkroom data"
    assert "What happened: a backup <copy> was exposed" in mail.text
    assert "2026-11-22 12:00 UTC" in mail.text and "account, images" in mail.text
    assert str(incident_id) in mail.text and "change your password" in mail.text
    assert "a backup &lt;copy&gt; was exposed" in mail.html  # escaped in HTML
