"""A minimal PayPal REST client: Orders v2, refunds, webhook verification.

PayPal's documented REST API (developer.paypal.com), over plain ``requests``
(green under ``nameko run``), JSON bodies, a timeout on every call:

- ``POST /v1/oauth2/token`` (HTTP Basic ``client_id:client_secret``,
  ``grant_type=client_credentials``): an access token, kept until a minute
  before its ``expires_in`` and fetched again once when PayPal answers 401;
- ``POST /v2/checkout/orders`` (``intent: CAPTURE``, one purchase unit whose
  ``custom_id`` and ``invoice_id`` are our order id; ``PayPal-Request-Id:
  order:<id>``, so a retry gets the same PayPal order): the buyer is sent to
  its ``payer-action`` (or ``approve``) link;
- ``POST /v2/checkout/orders/{id}/capture`` (``PayPal-Request-Id:
  capture:<id>``) and ``GET /v2/checkout/orders/{id}``;
- ``POST /v2/payments/captures/{id}/refund``;
- ``POST /v1/notifications/verify-webhook-signature``.

Amounts are minor units here and decimal strings at PayPal
(:func:`to_value`, :func:`to_minor`). PayPal's errors are
``{name, message, details: [{issue, description}], debug_id}``: a refusal
of the request (4xx with an issue) raises :class:`PayPalRefused` carrying
the first ``issue`` (``ORDER_ALREADY_CAPTURED``, ``INSTRUMENT_DECLINED``,
``ORDER_NOT_APPROVED``...); anything else (unreachable, 5xx, not JSON)
raises :class:`PaymentProviderError`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

import requests

from services.billing.payments.stripe import CheckoutSession, PaymentProviderError, with_query

log = logging.getLogger(__name__)

#: Currencies PayPal takes without decimals.
ZERO_DECIMAL = frozenset({"jpy", "huf", "twd"})
TOKEN_MARGIN_SECONDS = 60
APPROVE_RELS = ("payer-action", "approve")

ORDER_ALREADY_CAPTURED = "ORDER_ALREADY_CAPTURED"
INSTRUMENT_DECLINED = "INSTRUMENT_DECLINED"
ORDER_NOT_APPROVED = "ORDER_NOT_APPROVED"


class PayPalRefused(PaymentProviderError):
    """PayPal refused the request with an ``issue`` (its documented error names)."""

    def __init__(self, status: int, issue: str, message: str = ""):
        super().__init__(f"paypal answered {status}: {issue} {message}".strip())
        self.status = status
        self.issue = issue


def _exponent(currency: str) -> int:
    return 0 if currency.lower() in ZERO_DECIMAL else 2


def to_value(amount: int, currency: str) -> str:
    """Minor units as PayPal's ``value``: 500 usd -> "5.00", 500 jpy -> "500"."""
    places = _exponent(currency)
    return str((Decimal(int(amount)) / (10 ** places)).quantize(Decimal(1).scaleb(-places)))


def to_minor(value, currency: str) -> int | None:
    """PayPal's ``value`` in minor units ("5.00" usd -> 500); None when it is not a number."""
    try:
        amount = Decimal(str(value)) * (10 ** _exponent(currency))
    except (InvalidOperation, ValueError):
        return None
    if not amount.is_finite():
        return None
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def money(obj) -> tuple[int | None, str]:
    """(minor units, lower-case currency) of a PayPal money object ``{currency_code, value}``."""
    obj = obj if isinstance(obj, dict) else {}
    currency = str(obj.get("currency_code") or "").lower()
    return to_minor(obj.get("value"), currency) if currency else None, currency


def first_capture(order: dict) -> dict | None:
    """The capture of a PayPal order's first purchase unit, if any."""
    for unit in order.get("purchase_units") or []:
        captures = ((unit or {}).get("payments") or {}).get("captures") or []
        if captures and isinstance(captures[0], dict):
            return captures[0]
    return None


class PayPalClient:
    def __init__(self, base_url: str, client_id: str, client_secret: str, timeout: float,
                 session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.timeout = timeout
        self.http = session or requests.Session()
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ transport

    def _access_token(self, renew: bool = False) -> str:
        with self._lock:
            if not renew and self._token and self._token[1] > time.monotonic():
                return self._token[0]
            try:
                response = self.http.post(
                    f"{self.base_url}/v1/oauth2/token",
                    data={"grant_type": "client_credentials"},
                    auth=(self.client_id, self.client_secret),
                    headers={"Accept": "application/json"}, timeout=self.timeout)
            except requests.RequestException as exc:
                raise PaymentProviderError(f"paypal unreachable: {type(exc).__name__}") from exc
            if response.status_code != 200:
                raise PaymentProviderError(f"paypal refused the client credentials "
                                           f"({response.status_code})")
            try:
                body = response.json()
                token, lifetime = str(body["access_token"]), int(body.get("expires_in") or 0)
            except (ValueError, KeyError, TypeError) as exc:
                raise PaymentProviderError("paypal answered something that is not a token") from exc
            self._token = (token, time.monotonic() + max(0, lifetime - TOKEN_MARGIN_SECONDS))
            return token

    def _call(self, method: str, path: str, body: dict | str | None = None,
              request_id: str | None = None) -> dict:
        """The JSON answer of a 2xx; :class:`PayPalRefused` for a 4xx naming
        an issue; :class:`PaymentProviderError` for anything else. ``body``:
        a mapping sent as JSON, or JSON text sent as it is."""
        for attempt in (0, 1):
            headers = {"Authorization": f"Bearer {self._access_token(renew=attempt > 0)}",
                       "Content-Type": "application/json", "Accept": "application/json",
                       "Prefer": "return=representation"}
            if request_id:
                headers["PayPal-Request-Id"] = request_id
            try:
                sent = {"data": body.encode()} if isinstance(body, str) else {"json": body}
                response = self.http.request(method, f"{self.base_url}{path}", headers=headers,
                                             timeout=self.timeout, **sent)
            except requests.RequestException as exc:
                raise PaymentProviderError(f"paypal unreachable: {type(exc).__name__}") from exc
            if response.status_code != 401:
                break
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if 200 <= response.status_code < 300 and isinstance(answer, dict):
            return answer
        if 400 <= response.status_code < 500 and isinstance(answer, dict):
            details = answer.get("details") or [{}]
            first = details[0] if isinstance(details, list) and isinstance(details[0], dict) else {}
            issue = str(first.get("issue") or answer.get("name") or answer.get("error") or "")
            raise PayPalRefused(response.status_code, issue,
                                str(first.get("description") or answer.get("message") or "")[:200])
        raise PaymentProviderError(f"paypal answered {response.status_code}")

    # ------------------------------------------------------------ orders

    def create_checkout_session(self, *, order_id: str, name: str, amount: int, currency: str,
                                success_url: str, cancel_url: str,
                                subscription: dict | None = None) -> CheckoutSession:
        """A PayPal order for ``amount`` minor units (the same keywords as the
        Stripe client's): its id, and the link the buyer approves it at.
        ``subscription`` is ignored: a plan bought through PayPal is one
        period, paid once, never renewed by PayPal."""
        body = {
            "intent": "CAPTURE",
            "purchase_units": [{
                "reference_id": order_id, "custom_id": order_id, "invoice_id": order_id,
                "description": name[:127],
                "amount": {"currency_code": currency.upper(), "value": to_value(amount, currency)},
            }],
            "payment_source": {"paypal": {"experience_context": {
                "return_url": with_query(success_url, order_id=order_id),
                "cancel_url": with_query(cancel_url, order_id=order_id),
                "user_action": "PAY_NOW", "shipping_preference": "NO_SHIPPING",
            }}},
        }
        answer = self._call("POST", "/v2/checkout/orders", body, request_id=f"order:{order_id}")
        links = {link.get("rel"): link.get("href") for link in answer.get("links") or []
                 if isinstance(link, dict)}
        url = next((links[rel] for rel in APPROVE_RELS if links.get(rel)), None)
        if not answer.get("id") or not url:
            raise PaymentProviderError("paypal answered an order without id or approve link")
        return CheckoutSession(id=str(answer["id"]), url=str(url))

    def capture(self, paypal_order_id: str, request_id: str) -> dict:
        """Capture an approved order: the order as PayPal answers it."""
        return self._call("POST", f"/v2/checkout/orders/{paypal_order_id}/capture", {},
                          request_id=request_id)

    def get_order(self, paypal_order_id: str) -> dict:
        return self._call("GET", f"/v2/checkout/orders/{paypal_order_id}")

    def refund(self, capture_id: str, amount: int, currency: str, invoice_id: str,
               request_id: str) -> dict:
        """Refund ``amount`` minor units of a capture: the refund as PayPal answers it."""
        body = {"amount": {"currency_code": currency.upper(), "value": to_value(amount, currency)},
                "invoice_id": invoice_id}
        return self._call("POST", f"/v2/payments/captures/{capture_id}/refund", body,
                          request_id=request_id)

    # ------------------------------------------------------------ webhooks

    def verify_webhook(self, headers: dict, raw_event: str, webhook_id: str) -> bool:
        """Whether PayPal says this delivery (its ``PAYPAL-*`` headers and
        body ``raw_event``, a JSON object) is genuine and meant for
        ``webhook_id``. The body goes into ``webhook_event`` verbatim: the
        signature covers the delivered bytes (their CRC32), which a parse and
        re-serialisation could change."""
        fields = json.dumps({
            "auth_algo": headers["PAYPAL-AUTH-ALGO"],
            "cert_url": headers["PAYPAL-CERT-URL"],
            "transmission_id": headers["PAYPAL-TRANSMISSION-ID"],
            "transmission_sig": headers["PAYPAL-TRANSMISSION-SIG"],
            "transmission_time": headers["PAYPAL-TRANSMISSION-TIME"],
            "webhook_id": webhook_id,
        })
        body = fields[:-1] + ', "webhook_event": ' + raw_event.strip() + "}"
        try:
            answer = self._call("POST", "/v1/notifications/verify-webhook-signature", body)
        except PayPalRefused as exc:
            log.warning("paypal refused a webhook verification: %s", exc.issue)
            return False
        return answer.get("verification_status") == "SUCCESS"
