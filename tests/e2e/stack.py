"""The whole stack for end-to-end tests, and the helpers that drive it."""

from __future__ import annotations

import email
import email.policy
import re
import uuid
from pathlib import Path

import requests

from tests.conftest import wait_for

PASSWORD = "correct horse battery staple"


class Stack:
    def __init__(self, base_url: str, mail_dir: Path, processes: dict, objects_dir: Path,
                 stripe=None, stripe_webhook_secret: str | None = None, env: dict | None = None,
                 images=None, video=None, vendors: dict | None = None):
        self.base_url = base_url
        self.mail_dir = mail_dir
        self.objects_dir = objects_dir
        self.processes = processes
        self.stripe = stripe  # tests.fakes.stripe.FakeStripe, billing's payment provider
        self.stripe_webhook_secret = stripe_webhook_secret
        self.env = env or {}  # what the processes were started with
        self.images = images  # tests.fakes.providers.FakeOpenAIImages (text-to-image, first)
        self.video = video  # tests.fakes.providers.FakeAsyncTasks (image-to-video, first)
        self.vendors = vendors or {}  # the other adapter types' fakes, by vendor (conftest.py)
        self.http = requests.Session()

    def call(self, method: str, path: str, token: str | None = None, api_key: str | None = None, **kw):
        headers = kw.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if api_key:
            headers["X-API-Key"] = api_key
        return self.http.request(method, self.base_url + path, headers=headers, timeout=30, **kw)

    def mails_to(self, address: str) -> list[email.message.EmailMessage]:
        found = []
        for path in sorted(self.mail_dir.glob("*.eml"), key=lambda p: p.stat().st_mtime):
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if address.lower() in str(msg["To"]).lower():
                found.append(msg)
        return found

    def wait_for_mail(self, address: str, count: int = 1) -> email.message.EmailMessage:
        mails = wait_for(lambda: (m := self.mails_to(address)) and len(m) >= count and m, 30,
                         what=f"mail #{count} to {address}")
        return mails[count - 1]


def body_text(msg: email.message.EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain", "html"))
    return part.get_content()


def code_from(msg) -> str:
    return re.search(r"\b(\d{6})\b", body_text(msg)).group(1)


def token_from(msg) -> str:
    return re.search(r"\?token=([A-Za-z0-9_\-]+)", body_text(msg)).group(1)


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


def register(stack, address=None, password=PASSWORD):
    address = address or new_email()
    r = stack.call("POST", "/v1/auth/register", json={"email": address, "password": password})
    assert r.status_code == 201, r.text
    return address, r.json()


def verified_login(stack, address=None):
    """A new account, verified and logged in: ``(address, registered, token)``.
    ``registered`` is the register answer with ``api_key`` the account's first
    API key, made once verified (registration issues none)."""
    address, registered = register(stack, address)
    code = code_from(stack.wait_for_mail(address))
    assert stack.call("POST", "/v1/auth/verify-email", json={"email": address, "code": code}).status_code == 200
    r = stack.call("POST", "/v1/auth/login", json={"email": address, "password": PASSWORD})
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    key = stack.call("POST", "/v1/me/api-keys", token=token, json={"name": "default"})
    assert key.status_code == 201, key.text
    return address, {**registered, "api_key": key.json()}, token


def refused_within(stack, seconds: float, **credential):
    """A revoked credential stops working within the promised delay."""
    wait_for(lambda: stack.call("GET", "/v1/me", **credential).status_code == 401, seconds,
             interval=0.5, what="credential refused")




def post_stripe_event(stack, event: dict, secret: str | None = None, signature: str | None = None):
    """POST a Stripe event to the gateway's webhook as Stripe does: the raw JSON
    body, signed with the billing service's webhook secret (or ``secret``), or
    with the ``signature`` given."""
    from tests.fakes.stripe import signed_body

    body, header = signed_body(event, secret or stack.stripe_webhook_secret)
    return stack.call("POST", "/v1/billing/webhooks/stripe", data=body.encode(),
                      headers={"Stripe-Signature": signature or header,
                               "Content-Type": "application/json; charset=utf-8"})
