"""Stripe webhook signatures: what is accepted and what is refused."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from services.billing.payments.webhooks import parse_event, verify_signature
from services.common.errors import DomainError
from tests.fakes import stripe as fake

SECRET = "whsec_test_current"
OLD = "whsec_test_previous"
NOW = 1_800_000_000
BODY = json.dumps(fake.event("checkout.session.completed", {"id": "cs_test_1"}))


def refused(payload, header, secrets=(SECRET,), now=NOW) -> str:
    with pytest.raises(DomainError) as info:
        verify_signature(payload, header, secrets, 300, now)
    assert (info.value.code, info.value.status) == ("invalid_signature", 400)
    return info.value.details["reason"]


def test_a_correct_signature_is_accepted():
    assert verify_signature(BODY, fake.sign(BODY, SECRET, NOW), [SECRET], 300, NOW) == NOW


def test_the_fake_signs_like_stripe_documents():
    digest = hmac.new(SECRET.encode(), f"{NOW}.{BODY}".encode(), hashlib.sha256).hexdigest()
    assert fake.sign(BODY, SECRET, NOW) == f"t={NOW},v1={digest}"


def test_a_wrong_secret_is_refused():
    assert refused(BODY, fake.sign(BODY, "whsec_someone_else", NOW)) == "mismatch"


def test_a_tampered_body_is_refused():
    header = fake.sign(BODY, SECRET, NOW)
    assert refused(BODY.replace("cs_test_1", "cs_test_2"), header) == "mismatch"


@pytest.mark.parametrize("skew", [301, -301, 3600])
def test_a_stale_or_future_timestamp_is_refused(skew):
    assert refused(BODY, fake.sign(BODY, SECRET, NOW - skew)) == "stale"


def test_within_the_tolerance_is_accepted():
    verify_signature(BODY, fake.sign(BODY, SECRET, NOW - 299), [SECRET], 300, NOW)


@pytest.mark.parametrize("header", [None, ""])
def test_a_missing_header_is_refused(header):
    assert refused(BODY, header) == "missing"


@pytest.mark.parametrize("header", ["garbage", f"t={NOW}", "v1=abc", f"t=soon,v1={'0' * 64}"])
def test_a_malformed_header_is_refused(header):
    assert refused(BODY, header) == "malformed"


def test_any_of_several_v1_values_may_match():
    good = fake.sign(BODY, SECRET, NOW).split("v1=")[1]
    header = f"t={NOW},v1={'0' * 64},v0=ignored,v1={good}"
    assert verify_signature(BODY, header, [SECRET], 300, NOW) == NOW


def test_a_rotated_secret_still_verifies_during_rotation():
    old_header = fake.sign(BODY, OLD, NOW)
    assert verify_signature(BODY, old_header, [SECRET, OLD], 300, NOW) == NOW
    assert refused(BODY, old_header, secrets=(SECRET,)) == "mismatch"


@pytest.mark.parametrize("body", ["not json", "[]", '{"id": "evt_1"}',
                                  '{"id": "evt_1", "type": "x", "data": {}}'])
def test_bodies_that_are_not_stripe_events_are_invalid_requests(body):
    with pytest.raises(DomainError) as info:
        parse_event(body)
    assert (info.value.code, info.value.status) == ("invalid_request", 400)
