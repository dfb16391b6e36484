"""A fake Stripe for tests: the Checkout Sessions endpoint over real HTTP,
and signed webhook bodies.

    with FakeStripe() as stripe:              # serves http://127.0.0.1:<port>
        env["STRIPE_API_BASE"] = stripe.api_base
        env["STRIPE_SECRET_KEY"] = stripe.secret_key
        ...                                   # the service creates a session
        session = stripe.sessions[-1]
        body, header = stripe.webhook(stripe.checkout_completed(session["id"]), WEBHOOK_SECRET)
        rpc.billing.handle_stripe_webhook(body, header)

``POST /v1/checkout/sessions`` checks ``Authorization: Bearer <secret_key>``
(401 otherwise, as Stripe does), parses the form (``line_items[0][...]``
keys kept flat), records every request in ``requests``, honours
``Idempotency-Key`` (the same key answers the same session) and answers a
session ``{id: "cs_test_...", object, url, amount_total, currency,
client_reference_id, metadata, payment_intent, payment_status, status}``.
``fail_next(status, times)`` makes the next requests fail with that status;
``stop()`` takes the server down (connection refused).

Subscriptions (what the official ``stripe`` SDK sends, pinned to API
version 2026-10-28): ``mode=subscription`` sessions take an inline
``price_data[recurring][interval]`` or a ``price`` made with ``add_price``,
and keep ``subscription_data[metadata]``; ``POST /v1/subscriptions/<id>``
(``cancel_at_period_end``), ``DELETE /v1/subscriptions/<id>`` (cancel now)
and ``POST /v1/billing_portal/sessions`` (``customer``, ``return_url``: an
unknown customer is 400 ``resource_missing``). Stripe's side of time is
driven by the test: ``complete_subscription`` (the customer paid: customer,
subscription, first invoice), ``renew`` (the period ends: the renewal
invoice paid or declined, or the subscription deleted when it was set to
cancel at period end) and ``retry_payment`` return the events Stripe would
send, shaped as that API version documents them (``invoice.parent.
subscription_details``, ``subscription.items.data[].current_period_end``).

Webhook helpers (module functions, also usable without a server):
:func:`sign` makes a ``Stripe-Signature`` header, :func:`signed_body` a
(body, header) pair, :func:`event` an event envelope;
``checkout_completed`` / ``charge_refunded`` / ``dispute`` build the events
the billing service acts on, from a session this fake created.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

DEFAULT_SECRET_KEY = "sk_test_fake_darkroom"


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]


@dataclass
class _Failure:
    status: int
    times: int


@dataclass
class FakeStripe:
    secret_key: str = DEFAULT_SECRET_KEY
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)
    sessions: list[dict] = field(default_factory=list)
    delay_seconds: float = 0.0

    def __post_init__(self):
        self._lock = threading.Lock()
        self._by_key: dict[str, dict] = {}
        self.subscriptions: dict[str, dict] = {}
        self.invoices: list[dict] = []
        self.customers: set[str] = set()
        self.prices: dict[str, dict] = {}
        self.portal_sessions: list[dict] = []
        self._failure: _Failure | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FakeStripe:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                fake._handle(self)

            def do_DELETE(self):
                fake._handle(self)

            def do_GET(self):
                self._send(404, {"error": {"type": "invalid_request_error", "message": "no"}})

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def fail_next(self, status: int = 500, times: int = 1) -> None:
        with self._lock:
            self._failure = _Failure(status, times)

    def session(self, session_id: str) -> dict:
        return next(s for s in self.sessions if s["id"] == session_id)

    def session_for_order(self, order_id: str) -> dict:
        return next(s for s in self.sessions if s["client_reference_id"] == str(order_id))

    # ------------------------------------------------------------ the endpoint

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length).decode()
        form = dict(parse_qsl(raw, keep_blank_values=True))
        headers = {k: v for k, v in handler.headers.items()}
        with self._lock:
            self.requests.append(RecordedRequest(handler.command, handler.path, headers, form))
            failure = self._failure
            if failure is not None:
                failure.times -= 1
                if failure.times <= 0:
                    self._failure = None
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if failure is not None:
            handler._send(failure.status, {"error": {"type": "api_error",
                                                     "message": "fake failure"}})
            return
        if handler.headers.get("Authorization") != f"Bearer {self.secret_key}":
            handler._send(401, {"error": {"type": "invalid_request_error",
                                          "message": "Invalid API Key provided"}})
            return
        if handler.path.startswith("/v1/subscriptions/"):
            self._subscription_request(handler, form)
            return
        if handler.path == "/v1/billing_portal/sessions" and handler.command == "POST":
            self._portal_session(handler, form)
            return
        if handler.path != "/v1/checkout/sessions" or handler.command != "POST":
            handler._send(404, {"error": {"type": "invalid_request_error",
                                          "message": "Unrecognized request URL"}})
            return
        if form.get("mode") == "subscription":
            needed = (("line_items[0][price]",) if form.get("line_items[0][price]") else
                      ("line_items[0][price_data][recurring][interval]",
                       "line_items[0][price_data][currency]",
                       "line_items[0][price_data][unit_amount]",
                       "line_items[0][price_data][product_data][name]"))
        elif form.get("mode") == "payment":
            needed = ("line_items[0][price_data][currency]",
                      "line_items[0][price_data][unit_amount]",
                      "line_items[0][price_data][product_data][name]")
        else:
            needed = ("mode",)
        missing = [k for k in (*needed, "line_items[0][quantity]", "success_url", "cancel_url")
                   if not form.get(k)]
        if not missing and form.get("line_items[0][price]") not in (None, *self.prices):
            handler._send(400, {"error": {"type": "invalid_request_error", "code":
                                          "resource_missing", "param": "line_items[0][price]",
                                          "message": "No such price"}})
            return
        if missing:
            handler._send(400, {"error": {"type": "invalid_request_error",
                                          "message": f"Missing required param: {missing[0]}"}})
            return
        key = handler.headers.get("Idempotency-Key")
        with self._lock:
            session = self._by_key.get(key) if key else None
            if session is None:
                session = self._new_session(form)
                self.sessions.append(session)
                if key:
                    self._by_key[key] = session
        handler._send(200, session)

    def _new_session(self, form: dict) -> dict:
        session_id = f"cs_test_{secrets.token_hex(12)}"
        metadata = _prefixed(form, "metadata")
        quantity = int(form["line_items[0][quantity]"])
        price = self.prices.get(form.get("line_items[0][price]") or "")
        if price is None:
            price = {"unit_amount": int(form["line_items[0][price_data][unit_amount]"]),
                     "currency": form["line_items[0][price_data][currency]"],
                     "recurring": ({"interval": form["line_items[0][price_data][recurring]"
                                                     "[interval]"]}
                                   if form["mode"] == "subscription" else None)}
        return {
            "id": session_id,
            "object": "checkout.session",
            "url": f"https://checkout.stripe.test/c/pay/{session_id}",
            "mode": form["mode"],
            "amount_total": price["unit_amount"] * quantity,
            "currency": price["currency"],
            "client_reference_id": form.get("client_reference_id"),
            "metadata": metadata,
            "payment_intent": None,
            "payment_status": "unpaid",
            "status": "open",
            "success_url": form["success_url"],
            "cancel_url": form["cancel_url"],
            "name": form.get("line_items[0][price_data][product_data][name]"),
            "customer": None,
            "subscription": None,
            "_price": price,
            "_subscription_metadata": _prefixed(form, "subscription_data[metadata]"),
        }

    # ------------------------------------------------------------ subscriptions

    def add_price(self, unit_amount: int, currency: str = "usd", interval: str = "month") -> str:
        """A recurring Price (``price_...``), as made in Stripe's dashboard."""
        price_id = f"price_test_{secrets.token_hex(8)}"
        self.prices[price_id] = {"id": price_id, "object": "price", "unit_amount": unit_amount,
                                 "currency": currency, "recurring": {"interval": interval}}
        return price_id

    def _subscription_request(self, handler, form: dict) -> None:
        sub_id = handler.path.rsplit("/", 1)[-1]
        with self._lock:
            sub = self.subscriptions.get(sub_id)
            if sub is not None and handler.command == "DELETE":
                if sub["status"] == "canceled":
                    handler._send(400, {"error": {
                        "type": "invalid_request_error", "code": "resource_missing",
                        "message": "This subscription has already been canceled"}})
                    return
                sub.update(status="canceled", canceled_at=int(time.time()))
            elif sub is not None:
                if "cancel_at_period_end" in form:
                    flag = form["cancel_at_period_end"] == "true"
                    sub.update(cancel_at_period_end=flag,
                               cancel_at=_period_end(sub) if flag else None)
        if sub is None:
            handler._send(404, {"error": {"type": "invalid_request_error",
                                          "code": "resource_missing",
                                          "message": f"No such subscription: '{sub_id}'"}})
            return
        handler._send(200, sub)

    def _portal_session(self, handler, form: dict) -> None:
        if form.get("customer") not in self.customers:
            handler._send(400, {"error": {"type": "invalid_request_error",
                                          "code": "resource_missing", "param": "customer",
                                          "message": f"No such customer: '{form.get('customer')}'"}})
            return
        portal_id = f"bps_test_{secrets.token_hex(12)}"
        portal = {"id": portal_id, "object": "billing_portal.session",
                  "customer": form["customer"], "return_url": form.get("return_url"),
                  "url": f"https://billing.stripe.test/p/session/{portal_id}",
                  "livemode": False, "created": int(time.time())}
        self.portal_sessions.append(portal)
        handler._send(200, portal)

    def complete_subscription(self, session_id: str, period_start: int | None = None) -> list[dict]:
        """The customer paid a ``mode=subscription`` session: Stripe makes the
        customer, the subscription (with ``subscription_data[metadata]``) and
        its first invoice, paid. The events Stripe sends, in its usual order."""
        session = self.session(session_id)
        start = int(time.time()) if period_start is None else period_start
        customer = f"cus_test_{secrets.token_hex(8)}"
        sub_id = f"sub_test_{secrets.token_hex(12)}"
        price = {"id": f"price_test_{secrets.token_hex(8)}", "object": "price",
                 **{k: v for k, v in session["_price"].items() if k != "id"}}
        sub = {"id": sub_id, "object": "subscription", "customer": customer,
               "status": "active", "cancel_at_period_end": False, "cancel_at": None,
               "canceled_at": None, "metadata": dict(session["_subscription_metadata"]),
               "created": start, "latest_invoice": None,
               "items": {"object": "list", "data": [{
                   "id": f"si_test_{secrets.token_hex(8)}", "object": "subscription_item",
                   "price": price, "quantity": 1, "current_period_start": start,
                   "current_period_end": _add_month(start)}]}}
        with self._lock:
            self.customers.add(customer)
            self.subscriptions[sub_id] = sub
            session.update(customer=customer, subscription=sub_id)
        completed = self.checkout_completed(session_id, payment_intent=None)
        invoice = self._invoice(sub, "subscription_create", paid=True)
        return [completed, event("customer.subscription.created", _public(sub)),
                event("invoice.paid", invoice)]

    def renew(self, sub_id: str, paid: bool = True) -> list[dict]:
        """The subscription's period ends: Stripe moves it to the next period
        and charges the renewal invoice. Paid: ``invoice.paid`` (and the
        subscription updated); declined: ``invoice.payment_failed`` and the
        subscription ``past_due``. A subscription set to cancel at period
        end is deleted instead (``customer.subscription.deleted``)."""
        sub = self.subscriptions[sub_id]
        item = sub["items"]["data"][0]
        if sub["cancel_at_period_end"]:
            sub.update(status="canceled", canceled_at=item["current_period_end"])
            return [event("customer.subscription.deleted", _public(sub))]
        item["current_period_start"] = item["current_period_end"]
        item["current_period_end"] = _add_month(item["current_period_start"])
        invoice = self._invoice(sub, "subscription_cycle", paid=paid)
        sub["status"] = "active" if paid else "past_due"
        kind = "invoice.paid" if paid else "invoice.payment_failed"
        return [event(kind, invoice), event("customer.subscription.updated", _public(sub))]

    def retry_payment(self, sub_id: str, paid: bool) -> list[dict]:
        """Smart Retries tries the open renewal invoice again; after the last
        failure Stripe cancels the subscription (``customer.subscription.deleted``)."""
        sub = self.subscriptions[sub_id]
        invoice = next(i for i in reversed(self.invoices) if i["_subscription"] == sub_id)
        if paid:
            invoice.update(status="paid", amount_paid=invoice["amount_due"],
                           amount_remaining=0)
            sub["status"] = "active"
            return [event("invoice.paid", _public(invoice)),
                    event("customer.subscription.updated", _public(sub))]
        sub.update(status="canceled", canceled_at=int(time.time()))
        return [event("invoice.payment_failed", _public(invoice)),
                event("customer.subscription.deleted", _public(sub))]

    def _invoice(self, sub: dict, reason: str, paid: bool) -> dict:
        item = sub["items"]["data"][0]
        amount = item["price"]["unit_amount"] * item["quantity"]
        invoice = {
            "id": f"in_test_{secrets.token_hex(12)}", "object": "invoice",
            "customer": sub["customer"], "status": "paid" if paid else "open",
            "billing_reason": reason, "currency": item["price"]["currency"],
            "amount_due": amount, "amount_paid": amount if paid else 0,
            "amount_remaining": 0 if paid else amount, "attempt_count": 1,
            "period_start": item["current_period_start"], "period_end": item["current_period_start"],
            "parent": {"type": "subscription_details", "quote_details": None,
                       "subscription_details": {"subscription": sub["id"],
                                                "metadata": dict(sub["metadata"])}},
            "lines": {"object": "list", "has_more": False, "data": [{
                "id": f"il_test_{secrets.token_hex(8)}", "object": "line_item",
                "amount": amount, "currency": item["price"]["currency"],
                "period": {"start": item["current_period_start"],
                           "end": item["current_period_end"]}}]},
            "_subscription": sub["id"],
        }
        with self._lock:
            self.invoices.append(invoice)
            sub["latest_invoice"] = invoice["id"]
        return _public(invoice)

    # ------------------------------------------------------------ webhook events

    def checkout_completed(self, session_id: str, **overrides) -> dict:
        """``checkout.session.completed`` for a session of this fake, paid,
        with a new payment intent (remembered on the session)."""
        session = self.session(session_id)
        session.setdefault("_payment_intent", f"pi_test_{secrets.token_hex(12)}")
        obj = {k: v for k, v in session.items() if not k.startswith("_")}
        obj.update(payment_intent=session["_payment_intent"], payment_status="paid",
                   status="complete")
        obj.update(overrides)
        return event("checkout.session.completed", obj)

    def charge_refunded(self, session_id: str, amount_refunded: int, **overrides) -> dict:
        """``charge.refunded`` for the payment of a completed session;
        ``amount_refunded`` is the total refunded so far, as Stripe sends it."""
        session = self.session(session_id)
        return charge_refunded(session["_payment_intent"], session["amount_total"],
                               amount_refunded, session["currency"], **overrides)

    def dispute(self, session_id: str, closed_as: str | None = None, dispute_id: str = "dp_test_1",
                **overrides) -> dict:
        """``charge.dispute.created`` for the payment of a completed session,
        or with ``closed_as`` (won, lost...) ``charge.dispute.closed``."""
        session = self.session(session_id)
        kind = "charge.dispute.closed" if closed_as else "charge.dispute.created"
        return charge_dispute(kind, session["_payment_intent"],
                              overrides.pop("amount", session["amount_total"]),
                              session["currency"], closed_as or "needs_response", dispute_id,
                              **overrides)


def _prefixed(form: dict, prefix: str) -> dict:
    """``{prefix}[key]`` form fields as a dict (Stripe's metadata encoding)."""
    return {k[len(prefix) + 1:-1]: v for k, v in form.items()
            if k.startswith(prefix + "[") and k.count("[") == prefix.count("[") + 1}


def _public(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _period_end(sub: dict) -> int:
    return sub["items"]["data"][0]["current_period_end"]


def _add_month(ts: int) -> int:
    """A month later, as Stripe bills monthly (the same day of the next month)."""
    start = dt.datetime.fromtimestamp(ts, dt.UTC)
    year, month = start.year + start.month // 12, start.month % 12 + 1
    day = min(start.day, [31, 29 if year % 4 == 0 else 28, 31, 30, 31, 30, 31, 31, 30, 31,
                          30, 31][month - 1])
    return int(start.replace(year=year, month=month, day=day).timestamp())


def event(event_type: str, obj: dict, event_id: str | None = None) -> dict:
    return {
        "id": event_id or f"evt_test_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "type": event_type,
        "livemode": False,
        "data": {"object": obj},
    }


def charge_refunded(payment_intent: str, amount: int, amount_refunded: int, currency: str = "usd",
                    **overrides) -> dict:
    obj = {
        "id": f"ch_test_{secrets.token_hex(12)}",
        "object": "charge",
        "amount": amount,
        "amount_refunded": amount_refunded,
        "currency": currency,
        "payment_intent": payment_intent,
        "refunded": amount_refunded >= amount,
        "metadata": {},
    }
    obj.update(overrides)
    return event("charge.refunded", obj)


def charge_dispute(event_type: str, payment_intent: str, amount: int, currency: str = "usd",
                   status: str = "needs_response", dispute_id: str | None = None,
                   **overrides) -> dict:
    """``charge.dispute.created`` / ``charge.dispute.closed`` (``status`` won,
    lost, warning_closed...) for a payment, as Stripe sends them: the dispute
    object names its ``charge`` and ``payment_intent``."""
    obj = {
        "id": dispute_id or f"dp_test_{secrets.token_hex(12)}",
        "object": "dispute",
        "amount": amount,
        "charge": f"ch_test_{secrets.token_hex(12)}",
        "currency": currency,
        "payment_intent": payment_intent,
        "reason": "fraudulent",
        "status": status,
        "metadata": {},
    }
    obj.update(overrides)
    return event(event_type, obj)


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header value for ``payload``."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def signed_body(evt: dict, secret: str, timestamp: int | None = None) -> tuple[str, str]:
    """(raw body, ``Stripe-Signature``) as Stripe would POST them."""
    body = json.dumps(evt, separators=(",", ":"))
    return body, sign(body, secret, timestamp)


# A method too, so a test holding the fake needs no other import.
FakeStripe.webhook = staticmethod(signed_body)
