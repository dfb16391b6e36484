"""A fake PayPal for tests: the REST endpoints Darkroom uses, over real HTTP,
following PayPal's documented protocol (developer.paypal.com).

    with FakePayPal() as paypal:              # serves http://127.0.0.1:<port>
        env["BILLING_PAYPAL_BASE_URL"] = paypal.url
        env["BILLING_PAYPAL_CLIENT_ID"] = paypal.client_id
        env["BILLING_PAYPAL_CLIENT_SECRET"] = paypal.client_secret
        env["BILLING_PAYPAL_WEBHOOK_ID"] = paypal.webhook_id
        ...                                   # the service creates an order
        order = paypal.order_for(our_order_id)
        paypal.approve(order["id"])           # the buyer approves at the link
        ...                                   # the service captures it
        body, headers = paypal.webhook(paypal.capture_completed(order["id"]))

Endpoints:

- ``POST /v1/oauth2/token``: HTTP Basic ``client_id:client_secret`` and
  ``grant_type=client_credentials`` → ``{access_token, token_type: Bearer,
  expires_in, app_id, scope, nonce}``; 401 ``invalid_client`` otherwise.
  Every other endpoint wants ``Authorization: Bearer <a token it issued>``
  (401 ``invalid_token``).
- ``POST /v2/checkout/orders``: ``intent`` CAPTURE or AUTHORIZE, one or more
  ``purchase_units`` with ``amount {currency_code, value}`` (400
  ``INVALID_REQUEST`` with ``details[].issue`` otherwise) → 201 the order:
  ``PAYER_ACTION_REQUIRED`` with a ``payer-action`` link when the request has
  ``payment_source.paypal.experience_context``, else ``CREATED`` with an
  ``approve`` link. ``PayPal-Request-Id`` answers the same order again.
- ``GET /v2/checkout/orders/{id}``.
- ``POST /v2/checkout/orders/{id}/capture``: 422 ``UNPROCESSABLE_ENTITY``
  with the issue ``ORDER_NOT_APPROVED`` (not approved yet),
  ``ORDER_ALREADY_CAPTURED`` (captured before, under another request id) or
  ``INSTRUMENT_DECLINED`` (after :meth:`decline`; the order goes back to
  needing the buyer); 404 ``RESOURCE_NOT_FOUND``; else 201 the ``COMPLETED``
  order with its capture (``status`` COMPLETED, or what :meth:`approve` was
  told: PENDING, DECLINED). ``PayPal-Request-Id`` answers the first capture again.
- ``POST /v2/payments/captures/{id}/refund``: optional ``amount`` (the rest by
  default) → 201 the refund ``{id, status: COMPLETED, amount,
  seller_payable_breakdown: {gross_amount, total_refunded_amount}, links:
  [self, up]}``; 422 ``REFUND_AMOUNT_EXCEEDED`` / ``CAPTURE_FULLY_REFUNDED``.
- ``POST /v1/notifications/verify-webhook-signature``: all of ``auth_algo,
  cert_url, transmission_id, transmission_sig, transmission_time,
  webhook_id, webhook_event`` (400 ``VALIDATION_ERROR`` otherwise) →
  ``{verification_status: SUCCESS}`` only for a delivery this fake made
  (:meth:`webhook`) to that webhook id, with that signature, of that very
  event; ``FAILURE`` for anything else.

The server is :class:`tests.fakes.providers.FakeHTTPServer`: every request
is kept in ``requests``, ``fail_next(503, "drop", "hang"...)`` scripts the
next calls (any endpoint), ``stop()`` takes the server down (connection refused).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import zlib
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import parse_qsl

from tests.fakes.providers import FakeHTTPServer, Recorded, Response

CERT_URL = "https://api.sandbox.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-fake"


def _answer(status: int, body: dict) -> Response:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _error(status: int, name: str, issue: str | None = None, description: str = "") -> tuple:
    body = {"name": name, "message": description or name, "debug_id": _id(13).lower()}
    if issue:
        body["details"] = [{"issue": issue, "description": description or issue}]
    return status, body


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _id(size: int = 17) -> str:
    alphabet = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(size))


VERIFY_PATH = "/v1/notifications/verify-webhook-signature"


def _member_text(text: str, name: str) -> str:
    """The JSON text of the member ``name`` of the object ``text``, as written."""
    at = text.find(f'"{name}"')
    start = text.index(":", at) + 1
    start += len(text[start:]) - len(text[start:].lstrip())
    _, end = json.JSONDecoder().raw_decode(text, start)
    return text[start:end]


class FakePayPal(FakeHTTPServer):
    def __init__(self, client_id: str = "fake-paypal-client-id",
                 client_secret: str = "fake-paypal-client-secret",
                 webhook_id: str = "WH-FAKE-0123456789", token_lifetime: int = 32400):
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        self.webhook_id = webhook_id
        self.token_lifetime = token_lifetime
        self.orders: dict[str, dict] = {}
        self.captures: dict[str, dict] = {}
        self.refunds: list[dict] = []
        self._tokens: set[str] = set()
        self._by_request_id: dict[tuple[str, str], tuple[int, dict]] = {}
        self._declined: set[str] = set()
        self._capture_status: dict[str, str] = {}
        self._deliveries: dict[str, tuple[str, str, dict]] = {}
        self._signing_key = secrets.token_bytes(32)

    # ------------------------------------------------------------ the buyer

    def order_for(self, custom_id: str) -> dict:
        """The PayPal order whose purchase unit carries ``custom_id``."""
        return next(o for o in self.orders.values()
                    if o["purchase_units"][0].get("custom_id") == str(custom_id))

    def approve(self, order_id: str, capture_status: str = "COMPLETED") -> None:
        """The buyer approves the order at its link; its capture will come
        out ``capture_status`` (COMPLETED, PENDING, DECLINED)."""
        with self._lock:
            order = self.orders[order_id]
            order["status"] = "APPROVED"
            order["payer"] = {"payer_id": _id(13), "email_address": "buyer@example.com",
                              "name": {"given_name": "Test", "surname": "Buyer"}}
            self._capture_status[order_id] = capture_status

    def decline(self, order_id: str) -> None:
        """The buyer's funding source will be declined at the next capture."""
        with self._lock:
            self._declined.add(order_id)

    def capture_of(self, order_id: str) -> dict:
        return self.orders[order_id]["purchase_units"][0]["payments"]["captures"][0]

    # ------------------------------------------------------------ HTTP

    def scripted(self, request: Recorded) -> bool:
        return True  # fail_next() applies to any call

    def error(self, status: int) -> Response:
        return _answer(*_error(status, "INTERNAL_SERVER_ERROR"))

    def route(self, request: Recorded) -> Response:
        if request.path == "/v1/oauth2/token":
            body: object = dict(parse_qsl(request.body.decode()))
        else:
            try:
                body = json.loads(request.body) if request.body else None
            except ValueError:
                body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        if request.method == "POST" and request.path == VERIFY_PATH:
            return _answer(*self._verify(body, request.body.decode(errors="replace")))
        return _answer(*self._route(request.method, request.path, headers, body))

    def _route(self, method: str, path: str, headers, body) -> tuple[int, dict]:
        if method == "POST" and path == "/v1/oauth2/token":
            return self._token(headers, body)
        auth = headers.get("authorization") or ""
        if not auth.startswith("Bearer ") or auth[len("Bearer "):] not in self._tokens:
            return 401, {"error": "invalid_token",
                         "error_description": "Token signature verification failed"}
        parts = path.strip("/").split("/")
        request_id = headers.get("paypal-request-id")
        if method == "POST" and path == "/v2/checkout/orders":
            return self._idempotent("create", request_id, lambda: self._create(body))
        if parts[:3] == ["v2", "checkout", "orders"] and len(parts) == 4 and method == "GET":
            order = self.orders.get(parts[3])
            return (200, order) if order else _error(404, "RESOURCE_NOT_FOUND",
                                                     "INVALID_RESOURCE_ID")
        if parts[:3] == ["v2", "checkout", "orders"] and parts[4:] == ["capture"]:
            return self._idempotent("capture", request_id, lambda: self._capture(parts[3]))
        if parts[:3] == ["v2", "payments", "captures"] and parts[4:] == ["refund"]:
            return self._idempotent("refund", request_id, lambda: self._refund(parts[3], body))
        return _error(404, "RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID")

    def _idempotent(self, kind: str, request_id: str | None, make) -> tuple[int, dict]:
        with self._lock:
            if request_id and (kind, request_id) in self._by_request_id:
                return self._by_request_id[kind, request_id]
            status, answer = make()
            if request_id and status < 300:
                self._by_request_id[kind, request_id] = (status, answer)
            return status, answer

    def _token(self, headers, form) -> tuple[int, dict]:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if headers.get("authorization") != f"Basic {expected}" or \
                (form or {}).get("grant_type") != "client_credentials":
            return 401, {"error": "invalid_client",
                         "error_description": "Client Authentication failed"}
        token = f"A21AA{secrets.token_urlsafe(24)}"
        with self._lock:
            self._tokens.add(token)
        return 200, {"scope": "https://uri.paypal.com/services/payments/payment",
                     "access_token": token, "token_type": "Bearer", "app_id": "APP-80W284485P519543T",
                     "expires_in": self.token_lifetime, "nonce": f"{_now()}{_id(8)}"}

    def _create(self, body) -> tuple[int, dict]:
        if not isinstance(body, dict) or body.get("intent") not in ("CAPTURE", "AUTHORIZE"):
            return _error(400, "INVALID_REQUEST", "MISSING_REQUIRED_PARAMETER", "intent")
        units = body.get("purchase_units")
        if not isinstance(units, list) or not units:
            return _error(400, "INVALID_REQUEST", "MISSING_REQUIRED_PARAMETER", "purchase_units")
        for unit in units:
            amount = (unit or {}).get("amount") or {}
            if not amount.get("currency_code") or not amount.get("value"):
                return _error(400, "INVALID_REQUEST", "MISSING_REQUIRED_PARAMETER", "amount")
        order_id = _id()
        context = ((body.get("payment_source") or {}).get("paypal") or {}).get("experience_context")
        approve = f"https://www.sandbox.paypal.com/checkoutnow?token={order_id}"
        order = {
            "id": order_id, "intent": body["intent"],
            "status": "PAYER_ACTION_REQUIRED" if context else "CREATED",
            "purchase_units": [dict(unit, reference_id=unit.get("reference_id") or "default")
                               for unit in units],
            "create_time": _now(),
            "links": [
                {"href": f"{self.url}/v2/checkout/orders/{order_id}", "rel": "self",
                 "method": "GET"},
                {"href": approve, "rel": "payer-action" if context else "approve",
                 "method": "GET"},
                {"href": f"{self.url}/v2/checkout/orders/{order_id}/capture",
                 "rel": "capture", "method": "POST"},
            ],
        }
        if context:
            order["payment_source"] = {"paypal": {"experience_context": context}}
        self.orders[order_id] = order
        return 201, order

    def _capture(self, order_id: str) -> tuple[int, dict]:
        order = self.orders.get(order_id)
        if order is None:
            return _error(404, "RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID")
        if order["status"] == "COMPLETED":
            return _error(422, "UNPROCESSABLE_ENTITY", "ORDER_ALREADY_CAPTURED",
                          "Order already captured.If 'intent=CAPTURE' only one capture per "
                          "order is allowed.")
        if order["status"] != "APPROVED":
            return _error(422, "UNPROCESSABLE_ENTITY", "ORDER_NOT_APPROVED",
                          "Payer has not yet approved the Order for payment.")
        if order_id in self._declined:
            self._declined.discard(order_id)
            order["status"] = "PAYER_ACTION_REQUIRED"
            return _error(422, "UNPROCESSABLE_ENTITY", "INSTRUMENT_DECLINED",
                          "The instrument presented was either declined by the processor or "
                          "bank, or it can't be used for this payment.")
        unit = order["purchase_units"][0]
        capture_id = _id()
        capture = {
            "id": capture_id, "status": self._capture_status.get(order_id, "COMPLETED"),
            "amount": dict(unit["amount"]), "final_capture": True,
            "custom_id": unit.get("custom_id"), "invoice_id": unit.get("invoice_id"),
            "seller_protection": {"status": "ELIGIBLE"},
            "supplementary_data": {"related_ids": {"order_id": order_id}},
            "create_time": _now(), "update_time": _now(),
            "links": [
                {"href": f"{self.url}/v2/payments/captures/{capture_id}", "rel": "self",
                 "method": "GET"},
                {"href": f"{self.url}/v2/payments/captures/{capture_id}/refund",
                 "rel": "refund", "method": "POST"},
                {"href": f"{self.url}/v2/checkout/orders/{order_id}", "rel": "up",
                 "method": "GET"},
            ],
        }
        unit["payments"] = {"captures": [capture]}
        order["status"] = "COMPLETED"
        self.captures[capture_id] = capture
        return 201, order

    def _refund(self, capture_id: str, body) -> tuple[int, dict]:
        capture = self.captures.get(capture_id)
        if capture is None:
            return _error(404, "RESOURCE_NOT_FOUND", "INVALID_RESOURCE_ID")
        currency = capture["amount"]["currency_code"]
        total = Decimal(capture["amount"]["value"])
        refunded = sum((Decimal(r["amount"]["value"]) for r in self.refunds
                        if r["_capture_id"] == capture_id), Decimal(0))
        if refunded >= total:
            return _error(422, "UNPROCESSABLE_ENTITY", "CAPTURE_FULLY_REFUNDED",
                          "The capture has already been fully refunded")
        amount = ((body or {}).get("amount") or {}) if isinstance(body, dict) else {}
        value = Decimal(amount["value"]) if amount.get("value") else total - refunded
        if amount and amount.get("currency_code") != currency:
            return _error(422, "UNPROCESSABLE_ENTITY", "REFUND_CURRENCY_MISMATCH")
        if value <= 0 or refunded + value > total:
            return _error(422, "UNPROCESSABLE_ENTITY", "REFUND_AMOUNT_EXCEEDED",
                          "The refund amount must be less than or equal to the capture amount "
                          "that has not yet been refunded.")
        refund_id = _id()
        places = Decimal(capture["amount"]["value"]).as_tuple().exponent
        money = lambda v: {"currency_code": currency,  # noqa: E731
                           "value": str(v.quantize(Decimal(1).scaleb(places)))}
        refund = {
            "id": refund_id, "status": "COMPLETED", "amount": money(value),
            "invoice_id": (body or {}).get("invoice_id") or capture.get("invoice_id"),
            "custom_id": capture.get("custom_id"),
            "seller_payable_breakdown": {"gross_amount": money(value),
                                         "total_refunded_amount": money(refunded + value)},
            "create_time": _now(), "update_time": _now(),
            "links": [
                {"href": f"{self.url}/v2/payments/refunds/{refund_id}", "rel": "self",
                 "method": "GET"},
                {"href": f"{self.url}/v2/payments/captures/{capture_id}", "rel": "up",
                 "method": "GET"},
            ],
        }
        self.refunds.append(dict(refund, _capture_id=capture_id))
        capture["status"] = "REFUNDED" if refunded + value >= total else "PARTIALLY_REFUNDED"
        return 201, refund

    # ------------------------------------------------------------ webhooks

    def _signature(self, transmission_id: str, time: str, webhook_id: str, body: str) -> str:
        message = f"{transmission_id}|{time}|{webhook_id}|{zlib.crc32(body.encode())}"
        return base64.b64encode(hmac.new(self._signing_key, message.encode(),
                                         hashlib.sha256).digest()).decode()

    def webhook(self, event: dict, webhook_id: str | None = None) -> tuple[str, dict]:
        """(raw body, headers) of a delivery of ``event`` to ``webhook_id``
        (this fake's), as PayPal POSTs it: the signature covers the
        transmission id and time, the webhook id and the body's CRC32."""
        body = json.dumps(event, separators=(",", ":"))
        transmission_id, time = secrets.token_hex(16), _now()
        webhook_id = webhook_id or self.webhook_id
        signature = self._signature(transmission_id, time, webhook_id, body)
        with self._lock:
            self._deliveries[transmission_id] = (time, webhook_id, json.loads(body))
        return body, {
            "PAYPAL-TRANSMISSION-ID": transmission_id, "PAYPAL-TRANSMISSION-TIME": time,
            "PAYPAL-TRANSMISSION-SIG": signature, "PAYPAL-CERT-URL": CERT_URL,
            "PAYPAL-AUTH-ALGO": "SHA256withRSA", "Content-Type": "application/json",
        }

    def _verify(self, body, text: str) -> tuple[int, dict]:
        """As PayPal: the signature is checked against the CRC32 of
        ``webhook_event`` as sent (its JSON text in the request, ``text``), so
        an event re-serialised differently from the delivery fails."""
        names = ("auth_algo", "cert_url", "transmission_id", "transmission_sig",
                 "transmission_time", "webhook_id", "webhook_event")
        if not isinstance(body, dict) or any(not body.get(name) for name in names):
            return _error(400, "VALIDATION_ERROR", "MISSING_REQUIRED_PARAMETER")
        delivery = self._deliveries.get(body["transmission_id"])
        genuine = False
        if delivery is not None:
            time, webhook_id, event = delivery
            payload = _member_text(text, "webhook_event")
            expected = self._signature(body["transmission_id"], body["transmission_time"],
                                       body["webhook_id"], payload)
            genuine = (time == body["transmission_time"] and webhook_id == body["webhook_id"]
                       and event == body["webhook_event"] and body["cert_url"] == CERT_URL
                       and hmac.compare_digest(expected, body["transmission_sig"]))
        return 200, {"verification_status": "SUCCESS" if genuine else "FAILURE"}

    def order_approved(self, order_id: str) -> dict:
        """``CHECKOUT.ORDER.APPROVED`` for an order of this fake (approve it first)."""
        return event("CHECKOUT.ORDER.APPROVED", "checkout-order", dict(self.orders[order_id]))

    def capture_completed(self, order_id: str, **overrides) -> dict:
        """``PAYMENT.CAPTURE.COMPLETED`` for the capture of an order of this fake."""
        resource = dict(self.capture_of(order_id), status="COMPLETED", **overrides)
        return event("PAYMENT.CAPTURE.COMPLETED", "capture", resource)

    def capture_denied(self, order_id: str) -> dict:
        return event("PAYMENT.CAPTURE.DENIED", "capture",
                     dict(self.capture_of(order_id), status="DECLINED"))

    def capture_refunded(self, refund_id: str | None = None) -> dict:
        """``PAYMENT.CAPTURE.REFUNDED`` for a refund of this fake (the last by default)."""
        refund = next(r for r in reversed(self.refunds) if refund_id in (None, r["id"]))
        return event("PAYMENT.CAPTURE.REFUNDED", "refund",
                     {k: v for k, v in refund.items() if not k.startswith("_")})

    def dispute(self, order_id: str, outcome: str | None = None,
                dispute_id: str = "PP-D-27803", amount: str | None = None) -> dict:
        """``CUSTOMER.DISPUTE.CREATED`` for the capture of an order, or with
        ``outcome`` (RESOLVED_BUYER_FAVOUR, RESOLVED_SELLER_FAVOUR...)
        ``CUSTOMER.DISPUTE.RESOLVED``."""
        capture = self.capture_of(order_id)
        disputed = dict(capture["amount"], value=amount or capture["amount"]["value"])
        resource = {
            "dispute_id": dispute_id, "create_time": _now(), "update_time": _now(),
            "disputed_transactions": [{
                "seller_transaction_id": capture["id"], "create_time": capture["create_time"],
                "transaction_status": "COMPLETED", "gross_amount": capture["amount"],
                "invoice_number": capture.get("invoice_id"), "custom": capture.get("custom_id"),
            }],
            "reason": "MERCHANDISE_OR_SERVICE_NOT_RECEIVED", "status": "OPEN",
            "dispute_amount": disputed, "dispute_life_cycle_stage": "INQUIRY",
            "dispute_channel": "INTERNAL",
        }
        if outcome is None:
            return event("CUSTOMER.DISPUTE.CREATED", "dispute", resource)
        resource.update(status="RESOLVED", dispute_outcome={"outcome_code": outcome})
        if outcome == "RESOLVED_BUYER_FAVOUR":
            resource["dispute_outcome"]["amount_refunded"] = disputed
        return event("CUSTOMER.DISPUTE.RESOLVED", "dispute", resource)


def event(event_type: str, resource_type: str, resource: dict,
          event_id: str | None = None) -> dict:
    """A webhook event envelope as PayPal sends it."""
    event_id = event_id or f"WH-{_id(17)}-{_id(17)}"
    return {
        "id": event_id, "event_version": "1.0", "create_time": _now(),
        "resource_type": resource_type, "resource_version": "2.0", "event_type": event_type,
        "summary": event_type.replace(".", " ").lower(), "resource": resource,
        "links": [{"href": f"https://api.sandbox.paypal.com/v1/notifications/webhooks-events/"
                           f"{event_id}", "rel": "self", "method": "GET"}],
    }
