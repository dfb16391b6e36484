"""Webhook signatures, the URL guard and the retry schedule (delivery over
real HTTP is in tests/integration/test_generation_providers.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
import standardwebhooks

from services.generation.webhooks import (
    BACKOFF_SCHEDULE_S,
    UnsafeUrl,
    UrlGuard,
    _classify,
    encode_body,
    is_public_address,
    next_delay,
    receiver_of,
    sign,
)

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
BODY = encode_body({"job_id": "j", "status": "succeeded"})


# ------------------------------------------------------------------ signatures (Standard Webhooks)


def test_the_signature_is_a_base64_hmac_of_id_timestamp_and_body_with_the_decoded_key():
    headers = sign(SECRET, "msg_1", BODY, timestamp=1700000000)
    expected = hmac.new(KEY, b"msg_1.1700000000." + BODY, hashlib.sha256).digest()
    assert headers == {"webhook-id": "msg_1", "webhook-timestamp": "1700000000",
                       "webhook-signature": "v1," + base64.b64encode(expected).decode()}


def test_the_standardwebhooks_library_verifies_our_signature():
    now = int(time.time())
    headers = sign(SECRET, "d-42", BODY, timestamp=now)
    assert standardwebhooks.Webhook(SECRET).verify(BODY, headers) == json.loads(BODY)
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    for secret, body, changed in ((other, BODY, {}), (SECRET, BODY + b" ", {}),
                                  (SECRET, BODY, {"webhook-id": "d-43"}),
                                  (SECRET, BODY, {"webhook-timestamp": str(now + 1)}),
                                  (SECRET, BODY, {"webhook-timestamp": str(now - 301)})):
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(secret).verify(body, {**headers, **changed})


def test_a_secret_without_a_key_is_refused():
    for broken in ("whsec_", ""):
        with pytest.raises(ValueError):
            sign(broken, "m", BODY)


def test_the_body_is_compact_sorted_json():
    assert encode_body({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


# ------------------------------------------------------------------ the URL guard


def resolver(table: dict[str, list[str]]):
    def resolve(host, port):
        if host not in table:
            raise OSError("no such host")
        return table[host]
    return resolve


PUBLIC = "93.184.216.34"


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1",
    "169.254.169.254", "169.254.1.1", "fe80::1", "fd00:ec2::254", "fc00::1", "100.64.0.1",
    "100.100.100.200", "0.0.0.0", "::", "224.0.0.1", "ff02::1", "240.0.0.1",
    "255.255.255.255", "192.0.2.1", "198.18.0.1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
])
def test_non_public_addresses_are_refused(address):
    assert not is_public_address(address)
    guard = UrlGuard(resolver=resolver({"hooks.example": [address]}))
    with pytest.raises(UnsafeUrl) as caught:
        guard.check("https://hooks.example/darkroom")
    assert caught.value.reason == "address_not_allowed"


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert is_public_address(address)
    guard = UrlGuard(resolver=resolver({"hooks.example": [address]}))
    assert guard.check("https://hooks.example:8443/x?y=1") == [address]


def test_every_resolved_address_must_be_public():
    guard = UrlGuard(resolver=resolver({"hooks.example": [PUBLIC, "10.0.0.5"]}))
    with pytest.raises(UnsafeUrl):
        guard.check("http://hooks.example/")


@pytest.mark.parametrize("url, reason", [
    ("ftp://hooks.example/x", "scheme_not_allowed"),
    ("file:///etc/passwd", "scheme_not_allowed"),
    ("gopher://hooks.example", "scheme_not_allowed"),
    ("https://user:pw@hooks.example/", "credentials_in_url"),
    ("https://user@hooks.example/", "credentials_in_url"),
    ("https:///nohost", "invalid_url"),
    ("https://hooks.example:99999/", "invalid_url"),
    ("", "invalid_url"),
    ("https://hooks.example/" + "x" * 3000, "invalid_url"),
    ("https://unknown.example/", "unresolvable_host"),
    ("http://metadata.google.internal/computeMetadata/v1/", "address_not_allowed"),
])
def test_malformed_or_sneaky_urls_are_refused(url, reason):
    guard = UrlGuard(resolver=resolver({"hooks.example": [PUBLIC],
                                        "metadata.google.internal": [PUBLIC]}))
    with pytest.raises(UnsafeUrl) as caught:
        guard.check(url)
    assert caught.value.reason == reason


def test_numeric_host_forms_are_resolved_before_the_check():
    guard = UrlGuard()  # the system resolver: these are literal addresses
    for url in ("http://2130706433/", "http://0x7f.0.0.1/", "http://127.1/", "http://[::1]/"):
        with pytest.raises(UnsafeUrl) as caught:
            guard.check(url)
        assert caught.value.reason == "address_not_allowed", url


def test_an_operator_allow_list_admits_internal_receivers():
    table = {"hooks.internal": ["10.0.0.7"], "ci.internal": ["192.168.5.5"],
             "other.internal": ["10.9.9.9"]}
    guard = UrlGuard(allow=["10.0.0.0/24", "ci.internal", " "], resolver=resolver(table))
    assert guard.check("http://hooks.internal/") == ["10.0.0.7"]
    assert guard.check("http://CI.internal./x") == ["192.168.5.5"]
    with pytest.raises(UnsafeUrl):
        guard.check("http://other.internal/")
    assert guard.address_allowed("anything", "10.0.0.200")
    assert not guard.address_allowed("anything", "10.0.1.1")


def test_the_allow_list_may_be_a_comma_separated_string():
    table = {"hooks.internal": ["10.0.0.7"], "ci.internal": ["192.168.5.5"]}
    guard = UrlGuard(allow="10.0.0.0/24, ci.internal,", resolver=resolver(table))
    assert guard.check("http://hooks.internal/") and guard.check("http://ci.internal/")
    assert guard.hosts == {"ci.internal"} and len(guard.networks) == 1
    assert UrlGuard(allow=None).hosts == set()


# ------------------------------------------------------------------ retries


@pytest.mark.parametrize("url, receiver", [
    ("https://Hooks.Example.com/a?b=c", "https://hooks.example.com:443"),
    ("http://hooks.example.com./x", "http://hooks.example.com:80"),
    ("https://hooks.example.com:8443/x", "https://hooks.example.com:8443"),
    ("http://[2001:db8::1]:81/x", "http://2001:db8::1:81"),
    ("not a url", None), ("http://:80/x", None),
])
def test_the_receiver_of_a_url_is_its_origin(url, receiver):
    assert receiver_of(url) == receiver


def test_the_backoff_schedule_grows_then_gives_up():
    assert next_delay(0) == 0.0
    delays = [next_delay(i) for i in range(1, len(BACKOFF_SCHEDULE_S) + 1)]
    assert delays == sorted(delays) and delays[0] == 10
    assert next_delay(len(BACKOFF_SCHEDULE_S) + 1) is None
    assert next_delay(2, schedule=(1, 2)) == 2 and next_delay(3, schedule=(1, 2)) is None


@pytest.mark.parametrize("status, delivered, retry", [
    (200, True, False), (204, True, False), (301, False, False), (302, False, False),
    (400, False, False), (404, False, False), (410, False, False), (408, False, True),
    (429, False, True), (500, False, True), (503, False, True),
])
def test_which_answers_are_retried(status, delivered, retry):
    outcome = _classify(status)
    assert (outcome.delivered, outcome.retry, outcome.status) == (delivered, retry, status)
