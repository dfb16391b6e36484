"""services.common.signing: what the gateway's /v1/files/<key> trusts."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from services.common import signing

SECRET = "s3cret"
NOW = 1_800_000_000.0


def parts(url: str) -> tuple[str, str, str]:
    split = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(split.query).items()}
    return unquote(split.path[len(signing.FILES_PREFIX):]), query["expires"], query["signature"]


def test_a_signed_url_verifies_until_it_expires():
    url, expires = signing.sign_url("http://gw/", SECRET, "GET", "objects/o/i", 60, now=NOW)
    assert url.startswith("http://gw/v1/files/objects/o/i?")
    key, exp, sig = parts(url)
    assert (key, int(exp)) == ("objects/o/i", expires) and expires == NOW + 60
    assert signing.verify(SECRET, "GET", key, exp, sig, now=NOW)
    assert signing.verify(SECRET, "GET", key, exp, sig, now=NOW + 60)
    assert not signing.verify(SECRET, "GET", key, exp, sig, now=NOW + 61)


@pytest.mark.parametrize("change", ["secret", "method", "key", "expires", "signature"])
def test_any_tampering_is_refused(change):
    url, _ = signing.sign_url("http://gw", SECRET, "GET", "objects/o/i", 60, now=NOW)
    key, exp, sig = parts(url)
    args = {"secret": SECRET, "method": "GET", "key": key, "expires": exp, "sig": sig}
    args[{"signature": "sig"}.get(change, change)] = {
        "secret": "other", "method": "PUT", "key": "objects/o/other",
        "expires": str(int(exp) + 3600), "signature": sig[:-1] + ("0" if sig[-1] != "0" else "1"),
    }[change]
    assert not signing.verify(args["secret"], args["method"], args["key"], args["expires"],
                              args["sig"], now=NOW)


@pytest.mark.parametrize("expires, sig", [(None, "x"), ("", "x"), ("soon", "x"), ("1900000000", None),
                                          ("1900000000", "")])
def test_missing_or_malformed_parameters_are_refused(expires, sig):
    assert not signing.verify(SECRET, "GET", "objects/o/i", expires, sig, now=NOW)
