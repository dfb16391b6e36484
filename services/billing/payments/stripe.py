"""Stripe through its official SDK (``stripe``): Checkout Sessions (one-off
payments and subscriptions), subscription cancellation, customer portal links.

One ``stripe.StripeClient`` per service, pinned to :data:`API_VERSION` (or
``STRIPE_API_VERSION``), pointed at ``STRIPE_API_BASE`` (the fake in the
tests), using ``requests`` (green under ``nameko run``) with a timeout and no
retries of its own. Each Checkout Session is created with an
``Idempotency-Key`` of ``order:<id>``: asking twice for one order's session
(a retry after a timeout) gets the same session from Stripe, never two.
Every SDK error becomes :class:`PaymentProviderError`. The SDK (with httpx,
which it imports) is imported at the first request, not at start (issue 15).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

log = logging.getLogger(__name__)

#: The Stripe API version every request and every webhook endpoint is pinned
#: to: the one the pinned SDK is written for (the shapes payments/ and
#: subscriptions.py read: ``invoice.parent.subscription_details``,
#: ``subscription.items.data[].current_period_end``).
API_VERSION = "2026-10-28.endive"


class PaymentProviderError(Exception):
    """Stripe could not be reached (``status`` None) or refused the request."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


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
                 api_version: str = API_VERSION):
        self.api_base = api_base.rstrip("/")
        self._sdk_settings = (secret_key, api_version, timeout)
        self._client = None

    @property
    def client(self):
        """The SDK's client, made at the first request."""
        if self._client is None:
            import stripe

            secret_key, api_version, timeout = self._sdk_settings
            self._client = stripe.StripeClient(
                secret_key, stripe_version=api_version, base_addresses={"api": self.api_base},
                max_network_retries=0, http_client=stripe.RequestsClient(timeout=timeout),
            )
        return self._client

    def _call(self, what: str, request):
        import stripe

        try:
            return request()
        except stripe.APIConnectionError as exc:
            raise PaymentProviderError(f"stripe unreachable: {type(exc).__name__}") from exc
        except stripe.StripeError as exc:
            message = str(getattr(exc, "user_message", None) or exc._message or "")[:200]
            raise PaymentProviderError(f"stripe answered {exc.http_status} to {what}: {message}",
                                       exc.http_status) from exc

    def create_checkout_session(self, *, order_id: str, name: str, amount: int, currency: str,
                                success_url: str, cancel_url: str,
                                subscription: dict | None = None) -> CheckoutSession:
        """A payment of ``amount`` minor units for ``name``: one-off, or with
        ``subscription`` (``{"price": <Stripe price id or None>, "interval":
        "month", "metadata": {...}}``) a subscription renewing each interval.
        The order id travels as ``client_reference_id`` and in the metadata
        of the session and of its payment intent or subscription (so
        refunds, invoices and subscription events can name it too)."""
        if subscription is None:
            item = {"price_data": {"currency": currency, "unit_amount": amount,
                                   "product_data": {"name": name}}, "quantity": 1}
            extra = {"mode": "payment",
                     "payment_intent_data": {"metadata": {"order_id": order_id}}}
        else:
            if subscription.get("price"):
                item = {"price": subscription["price"], "quantity": 1}
            else:
                item = {"price_data": {"currency": currency, "unit_amount": amount,
                                       "product_data": {"name": name},
                                       "recurring": {"interval": subscription["interval"]}},
                        "quantity": 1}
            extra = {"mode": "subscription", "subscription_data": {
                "metadata": {"order_id": order_id, **subscription.get("metadata", {})}}}
        params = {
            "line_items": [item],
            "success_url": with_query(success_url, order_id=order_id),
            "cancel_url": with_query(cancel_url, order_id=order_id),
            "client_reference_id": order_id,
            "metadata": {"order_id": order_id},
            **extra,
        }
        session = self._call("a checkout session", lambda: self.client.v1.checkout.sessions.create(
            params, options={"idempotency_key": f"order:{order_id}"}))
        session_id, url = getattr(session, "id", None), getattr(session, "url", None)
        if not session_id or not url:
            raise PaymentProviderError("stripe answered a session without id or url")
        return CheckoutSession(id=str(session_id), url=str(url))

    def cancel_at_period_end(self, subscription_id: str, cancel: bool = True) -> dict:
        """Ask Stripe to end the subscription when its paid period ends (or,
        with ``cancel=False``, to keep renewing it). Returns the subscription."""
        found = self._call("a subscription update", lambda: self.client.v1.subscriptions.update(
            subscription_id, {"cancel_at_period_end": cancel}))
        return found.to_dict()

    def cancel_now(self, subscription_id: str) -> None:
        """End the subscription at once (an erased account is never charged again)."""
        self._call("a subscription cancellation",
                   lambda: self.client.v1.subscriptions.cancel(subscription_id))

    def portal_url(self, customer_id: str, return_url: str) -> str:
        """A customer portal session's link (``POST /v1/billing_portal/sessions``)."""
        portal = self._call("a portal session", lambda: self.client.v1.billing_portal.sessions
                            .create({"customer": customer_id, "return_url": return_url}))
        if not getattr(portal, "url", None):
            raise PaymentProviderError("stripe answered a portal session without url")
        return str(portal.url)
