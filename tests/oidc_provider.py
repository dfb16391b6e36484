"""A real OpenID Connect provider for the tests: ``oidc-provider-mock`` (PyPI,
built on Authlib's server) run as its own process on loopback, and what a
browser does with it.

It publishes ``/.well-known/openid-configuration`` and ``/jwks``, signs ID
tokens with RS256, accepts any client id and secret, and authorizes whoever
POSTs a ``sub`` to its authorization endpoint; ``PUT /users/<sub>`` sets the
claims (``email``, ``email_verified``...) its ID tokens carry for a subject.
``--token-max-age`` sets how long its ID tokens live (a negative one issues
tokens already expired).
"""

from __future__ import annotations

import sys
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import requests

from tests.conftest import Process, free_port


class OidcProvider:
    def __init__(self, log_dir, token_max_age: int = 3600, name: str = "oidc-provider"):
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        command = (f"{sys.executable} -m oidc_provider_mock --port {self.port} "
                   f"--host 127.0.0.1 --token-max-age {token_max_age}")
        self.process = Process(f"{name}-{self.port}", {"PATH": "/usr/bin:/bin"}, log_dir, command)

    def __enter__(self):
        self.process.start()
        self.process.wait_ready(self.issuer + "/.well-known/openid-configuration", timeout=30)
        return self

    def __exit__(self, *exc):
        self.process.stop()

    def set_user(self, subject: str, **claims) -> None:
        requests.put(f"{self.issuer}/users/{quote(subject, safe='')}", json=claims,
                     timeout=10).raise_for_status()

    def authorize(self, authorization_url: str, subject: str, deny: bool = False) -> str:
        """What a person does on the provider's page: sign in as ``subject`` (or
        refuse); returns where the provider sends the browser back (its Location)."""
        data = {"action": "deny"} if deny else {"sub": subject}
        response = requests.post(authorization_url, data=data, allow_redirects=False, timeout=10)
        assert response.status_code == 302, response.text
        return response.headers["Location"]


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def with_param(url: str, name: str, value: str) -> str:
    """``url`` with the query parameter ``name`` set to ``value`` (a tampered request)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    query[name] = [value]
    return parts._replace(query=urlencode(query, doseq=True)).geturl()

