"""Darkroom's Python client: ``Client`` for the HTTP API, ``verify_webhook``
for its job webhooks. Usage: clients/python/README.md."""

from .client import Client, WaitTimeout
from .errors import DarkroomError, WebhookVerificationError
from .models import (
    FINAL_STATES,
    Balance,
    Delivery,
    Error,
    Event,
    Image,
    Job,
    LedgerEntry,
    Model,
    ModelPrice,
    OutputURL,
    Page,
)
from .webhooks import WebhookEvent, verify_webhook

__version__ = "0.1.0"

__all__ = [
    "FINAL_STATES", "Balance", "Client", "DarkroomError", "Delivery", "Error", "Event", "Image",
    "Job", "LedgerEntry", "Model", "ModelPrice", "OutputURL", "Page", "WaitTimeout",
    "WebhookEvent", "WebhookVerificationError", "verify_webhook",
]
