"""``verify_webhook`` against signatures made by the standardwebhooks library,
as the generation service makes them."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta

import pytest
import standardwebhooks
from darkroom_client import WebhookVerificationError, verify_webhook

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
BODY = json.dumps({"type": "job.completed", "job": {
    "id": "0190a5c3-0000-7000-8000-000000000001", "type": "text-to-image",
    "status": "succeeded", "attempt": 1, "outputs": ["img-1"], "price": 1, "error": None,
    "created_at": "2026-12-03T18:00:00+00:00",
    "finished_at": "2026-12-03T18:00:05+00:00"}}).encode()


def signed(body: bytes = BODY, secret: str = SECRET, when: datetime | None = None) -> dict:
    when = when or datetime.now(UTC)
    signature = standardwebhooks.Webhook(secret).sign("msg_2abc", when, body.decode())
    return {"Webhook-Id": "msg_2abc", "Webhook-Timestamp": str(int(when.timestamp())),
            "Webhook-Signature": signature, "Content-Type": "application/json"}


def test_a_signed_webhook_gives_its_event():
    event = verify_webhook(SECRET, BODY, signed())
    assert (event.type, event.webhook_id) == ("job.completed", "msg_2abc")
    assert (event.job.status, event.job.outputs, event.job.done) == ("succeeded", ["img-1"], True)
    assert event.job.finished_at == datetime(2026, 12, 3, 18, 0, 5, tzinfo=UTC)
    assert verify_webhook(SECRET, BODY.decode(), signed()).type == "job.completed"


@pytest.mark.parametrize("case", ["tampered", "other secret", "stale", "missing header",
                                  "malformed signature", "not json"])
def test_anything_else_is_refused(case):
    body, headers = BODY, signed()
    if case == "tampered":
        body = BODY.replace(b"succeeded", b"cancelled")
    elif case == "other secret":
        headers = signed(secret="whsec_" + base64.b64encode(os.urandom(32)).decode())
    elif case == "stale":
        headers = signed(when=datetime.now(UTC) - timedelta(minutes=10))
    elif case == "missing header":
        del headers["Webhook-Signature"]
    elif case == "malformed signature":
        headers["Webhook-Signature"] = "garbage"
    elif case == "not json":
        body = b"not json"
        headers = signed(body)
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(SECRET, body, headers)
    assert caught.value.code == "invalid_signature"
