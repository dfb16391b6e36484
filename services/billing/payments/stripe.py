"""A minimal Stripe API client: Checkout Sessions, and nothing else.

Plain ``requests`` (green under ``nameko run``), form-encoded like Stripe's
API wants, with the secret key as a Bearer token, a timeout, and an
``Idempotency-Key`` of ``order:<id>``: asking twice for one order's session
(a retry after a timeout) gets the same session from Stripe, never two.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

log = logging.getLogger(__name__)


class PaymentProviderError(Exception):
    """Stripe could not be reached or refused the request."""


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


def with_query(url: str, **params) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


class StripeClient:
    def __init__(self, api_base: str, secret_key: str, timeout: float,
                 session: requests.Session | None = None):
        self.api_base = api_base.rstrip("/")
        self.secret_key = secret_key
        self.timeout = timeout
        self.http = session or requests.Session()

    def create_checkout_session(self, *, order_id: str, name: str, amount: int, currency: str,
                                success_url: str, cancel_url: str) -> CheckoutSession:
        """A one-off payment of ``amount`` minor units for ``name``. The order
        id travels as ``client_reference_id`` and in the metadata of the
        session and of its payment intent (so refunds can name it too)."""
        form = [
            ("mode", "payment"),
            ("line_items[0][price_data][currency]", currency),
            ("line_items[0][price_data][unit_amount]", str(amount)),
            ("line_items[0][price_data][product_data][name]", name),
            ("line_items[0][quantity]", "1"),
            ("success_url", with_query(success_url, order_id=order_id)),
            ("cancel_url", with_query(cancel_url, order_id=order_id)),
            ("client_reference_id", order_id),
            ("metadata[order_id]", order_id),
            ("payment_intent_data[metadata][order_id]", order_id),
        ]
        try:
            response = self.http.post(
                f"{self.api_base}/v1/checkout/sessions",
                data=form,
                headers={"Authorization": f"Bearer {self.secret_key}",
                         "Idempotency-Key": f"order:{order_id}"},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise PaymentProviderError(f"stripe unreachable: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise PaymentProviderError(f"stripe answered {response.status_code}: {_error(response)}")
        try:
            body = response.json()
            session = CheckoutSession(id=str(body["id"]), url=str(body["url"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise PaymentProviderError("stripe answered something that is not a session") from exc
        if not session.id or not session.url:
            raise PaymentProviderError("stripe answered a session without id or url")
        return session


def _error(response: requests.Response) -> str:
    try:
        error = response.json().get("error") or {}
        return str(error.get("message") or error.get("type") or "")[:200]
    except (ValueError, AttributeError):
        return response.text[:200]
