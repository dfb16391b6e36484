"""Checking a job webhook the Standard Webhooks way (docs/api.md, "Webhooks")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import standardwebhooks

from .errors import WebhookVerificationError
from .models import Job


@dataclass
class WebhookEvent:
    """A verified webhook: ``type`` is ``job.started``, ``job.completed``,
    ``job.failed`` or ``job.cancelled``; ``webhook_id`` is the same on every
    retry and redelivery of one delivery: dedupe on it."""

    type: str
    job: Job
    webhook_id: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def verify_webhook(secret: str, body: bytes | str, headers: Mapping[str, str]) -> WebhookEvent:
    """The event of a webhook request, once its signature checks out with the
    account's secret (``whsec_...``, ``Client.webhook_secret()``). ``body`` is
    the raw body, exactly as received (verify before parsing); ``headers``
    any mapping of the request's headers. A bad signature, a timestamp more
    than five minutes off or a missing header raise
    :class:`WebhookVerificationError`."""
    lowered = {str(k).lower(): v for k, v in headers.items()}
    raw = body.encode() if isinstance(body, str) else bytes(body)
    try:
        payload = standardwebhooks.Webhook(secret).verify(raw, lowered)
    except (standardwebhooks.WebhookVerificationError, ValueError) as exc:
        # ValueError: the library's own, for a signature without "v1," or bad base64,
        # a body that is not UTF-8 or not JSON
        raise WebhookVerificationError(str(exc) or "the webhook does not verify") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("job"), dict):
        raise WebhookVerificationError("the webhook's body is not a job event")
    return WebhookEvent(type=str(payload.get("type")), job=Job.from_dict(payload["job"]),
                        webhook_id=lowered["webhook-id"], raw=payload)
