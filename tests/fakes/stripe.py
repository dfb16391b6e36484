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

Webhook helpers (module functions, also usable without a server):
:func:`sign` makes a ``Stripe-Signature`` header, :func:`signed_body` a
(body, header) pair, :func:`event` an event envelope;
``checkout_completed`` / ``charge_refunded`` / ``dispute`` build the events
the billing service acts on, from a session this fake created.
"""

from __future__ import annotations

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
            self.requests.append(RecordedRequest("POST", handler.path, headers, form))
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
        if handler.path != "/v1/checkout/sessions":
            handler._send(404, {"error": {"type": "invalid_request_error",
                                          "message": "Unrecognized request URL"}})
            return
        missing = [k for k in ("mode", "line_items[0][price_data][currency]",
                               "line_items[0][price_data][unit_amount]",
                               "line_items[0][price_data][product_data][name]",
                               "line_items[0][quantity]", "success_url", "cancel_url")
                   if not form.get(k)]
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
        metadata = {k[len("metadata["):-1]: v for k, v in form.items() if k.startswith("metadata[")}
        unit_amount = int(form["line_items[0][price_data][unit_amount]"])
        quantity = int(form["line_items[0][quantity]"])
        return {
            "id": session_id,
            "object": "checkout.session",
            "url": f"https://checkout.stripe.test/c/pay/{session_id}",
            "mode": form["mode"],
            "amount_total": unit_amount * quantity,
            "currency": form["line_items[0][price_data][currency]"],
            "client_reference_id": form.get("client_reference_id"),
            "metadata": metadata,
            "payment_intent": None,
            "payment_status": "unpaid",
            "status": "open",
            "success_url": form["success_url"],
            "cancel_url": form["cancel_url"],
            "name": form["line_items[0][price_data][product_data][name]"],
        }

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


def event(event_type: str, obj: dict, event_id: str | None = None) -> dict:
    return {
        "id": event_id or f"evt_test_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": "2024-06-20",
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
