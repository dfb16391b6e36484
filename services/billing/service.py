"""The billing service: credits (an exactly-once ledger with lots and holds),
plans and their grants, prices, and payments through Stripe Checkout.

Entrypoints are thin: load the payload through its contract, call the domain
modules (:mod:`ledger`, :mod:`plans`, :mod:`pricing`, :mod:`orders`,
:mod:`saga`, :mod:`audit`, :mod:`privacy`, :mod:`retention`, :mod:`payments`),
which dispatch events into the outbox in the worker's transaction, commit, dump the answer
through its contract. The domain modules never commit: the entrypoint does,
before it answers; ``create_checkout`` commits the order before it calls
Stripe (no transaction open while Stripe answers); the timers' sweeps commit
once per account (:meth:`BillingService._per_account`). See docs/billing.md.

    nameko run --config deploy/config/billing.yaml services.billing.service:BillingService
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from services.billing import (
    audit,
    ledger,
    orders,
    plans,
    pricing,
    retention,
    saga,
    subscriptions,
)
from services.billing import privacy as privacy_data
from services.billing.models import Order, outbox, processed_events
from services.billing.payments import paypal_orders, providers, webhooks
from services.billing.payments.paypal import PayPalClient
from services.billing.payments.stripe import PaymentProviderError, StripeClient
from services.billing.settings import BillingSettings
from services.common import metrics, spending
from services.common import privacy_parts as parts
from services.common.contracts import billing as c
from services.common.contracts import load_rpc
from services.common.db import Database, claim_event
from services.common.errors import DomainError, not_found
from services.common.ids import utcnow
from services.common.messaging import EventPublisher, event_handler
from services.common.privacy_parts import ErasurePendingMirror, PrivacyParticipant
from services.common.queues import RpcProxy, rpc
from services.common.races import first_wins
from services.common.service import DarkroomService, FromConfig
from services.common.timers import timer

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HOUSEKEEPING_INTERVAL_SECONDS = 60
GRANT_INTERVAL_SECONDS = 3600
RETENTION_INTERVAL_SECONDS = 86400
MAINTENANCE_TASKS = ("holds", "plans", "lots", "orders", "grants", "payments", "subscriptions")
SWEEP_BATCH = 500  # accounts (or holds) a sweep takes per run; grants go on to the end
MAX_GRANT_BATCHES = 1000


def stripe_client(config) -> StripeClient:
    settings = BillingSettings.from_config(config)
    return StripeClient(settings.stripe_api_base, settings.stripe_secret_key,
                        settings.stripe_timeout_seconds, settings.stripe_api_version)


def paypal_client(config) -> PayPalClient:
    settings = BillingSettings.from_config(config)
    return PayPalClient(settings.paypal_base_url, settings.paypal_client_id,
                        settings.paypal_client_secret, settings.paypal_timeout_seconds)


class BillingService(PrivacyParticipant, ErasurePendingMirror, DarkroomService):
    name = "billing"
    privacy = privacy_data  # its part of privacy requests

    db = Database(migrations=MIGRATIONS)
    dispatch = EventPublisher(outbox=outbox)
    settings = FromConfig(BillingSettings.from_config)  # a bad plan or price list stops the start
    stripe = FromConfig(stripe_client)
    paypal = FromConfig(paypal_client)
    storage = RpcProxy("storage")  # a big export part is stored there
    auth = RpcProxy("auth")  # whether an address is verified (services.common.spending)

    def _user(self, user_id):
        return load_rpc(c.UserRef, {"user_id": user_id})["user_id"]

    def _retrying(self, work, attempts: int = 3):
        """Run ``work()`` (which commits) again after losing a unique-key race
        (two first operations of a user opening the account at once, a
        webhook delivered twice at once): the retry sees the winner's rows."""
        return first_wins(self.db, work, attempts=attempts)

    # ------------------------------------------------------------ reads

    @rpc(expected_exceptions=DomainError)
    def get_balance(self, user_id) -> dict:
        user = self._user(user_id)

        def work():
            now = utcnow()
            account = plans.open_account(self.db, self.settings, user, now, self.dispatch)
            if account is None:
                raise not_found("account")
            self.db.commit()
            return account, now

        account, now = self._retrying(work)
        return c.Balance().dump(plans.balance(self.db, self.settings, account, now))

    @rpc(expected_exceptions=DomainError)
    def list_ledger(self, user_id, query=None) -> dict:
        user = self._user(user_id)
        data = load_rpc(c.LedgerQuery, query)
        rows, next_cursor = ledger.list_entries(self.db, user, data["limit"], data["cursor"])
        return c.LedgerPage().dump({"items": [ledger.view(e) for e in rows],
                                    "next_cursor": next_cursor})

    @rpc(expected_exceptions=DomainError)
    def list_plans(self) -> dict:
        return c.PlanList().dump({"items": [p.view() for p in plans.listed(self.settings)]})

    @rpc(expected_exceptions=DomainError)
    def list_prices(self) -> dict:
        return c.Prices().dump(pricing.prices(self.settings))

    @rpc(expected_exceptions=DomainError)
    def quote(self, payload) -> dict:
        data = load_rpc(c.Quote, payload)
        return c.QuoteAnswer().dump(pricing.quote(self.settings.prices, data))

    @rpc(expected_exceptions=DomainError)
    def list_orders(self, user_id, query=None) -> dict:
        user = self._user(user_id)
        data = load_rpc(c.OrderQuery, query)
        rows, next_cursor = orders.list_orders(self.db, user, data)
        return c.OrderPage().dump({"items": [orders.view(o) for o in rows],
                                   "next_cursor": next_cursor})

    # ------------------------------------------------------------ payments

    @rpc(expected_exceptions=DomainError)
    def create_checkout(self, user_id, payload, idempotency_key=None) -> dict:
        user = self._user(user_id)
        data = load_rpc(c.Checkout, payload)
        key = load_rpc(c.IdempotencyKey, {"idempotency_key": idempotency_key})["idempotency_key"]
        spending.require_verified(self.auth, user)  # 403 email_unverified

        def begin():
            found = orders.begin_checkout(self.db, self.settings, user, data, key, utcnow(),
                                          self.dispatch)
            self.db.commit()  # the order exists before Stripe hears of it
            return found

        order, needs_session = self._retrying(begin)
        if needs_session:
            plan = self.settings.plans.get(order.item_id) if order.kind == "plan" else None
            try:
                client = providers.client_for(order.provider, self.stripe, self.paypal)
                session = client.create_checkout_session(
                    order_id=str(order.id), name=order.description, amount=int(order.amount),
                    currency=order.currency, success_url=self.settings.checkout_success_url,
                    cancel_url=self.settings.checkout_cancel_url,
                    subscription=(subscriptions.checkout_terms(plan, str(user), str(order.id))
                                  if plan is not None else None),
                )
            except PaymentProviderError as exc:
                orders.mark_failed(self.db, order.id, str(exc))
                self.db.commit()
                log.error("checkout failed: %s", exc, extra={"order_id": str(order.id)})
                raise orders.provider_unavailable() from None
            order = orders.attach_session(self.db, order.id, session.id, session.url)
            self.db.commit()
            log.info("checkout created", extra={"order_id": str(order.id), "kind": order.kind})
        return c.CheckoutCreated().dump({"order_id": order.id, "checkout_url": order.checkout_url})

    @rpc(expected_exceptions=DomainError)
    def handle_stripe_webhook(self, payload, signature=None) -> dict:
        data = load_rpc(c.StripeWebhook, {"payload": payload, "signature": signature})

        def work():
            result = webhooks.handle(self.db, self.settings, data["payload"], data["signature"],
                                     utcnow(), self.dispatch)
            self.db.commit()
            return result

        return c.WebhookReceived().dump(self._retrying(work))

    @rpc(expected_exceptions=DomainError)
    def capture_order(self, user_id, order_id) -> dict:
        """The buyer approved a PayPal order: take the money (idempotent)."""
        user = self._user(user_id)
        ref = load_rpc(c.OrderRef, {"order_id": order_id})["order_id"]
        order = paypal_orders.order_to_capture(self.db, self.settings, user, ref)
        if order.status == c.OrderStatus.PENDING:
            answer = paypal_orders.capture(self.paypal, order)

            def work():
                outcome = paypal_orders.apply_capture(self.db, self.settings, order.id, answer,
                                                      utcnow(), self.dispatch)
                self.db.commit()
                return outcome

            if self._retrying(work) == "declined":
                raise paypal_orders.payment_declined(order)
        return c.Order().dump(orders.view(self.db.get(Order, order.id)))

    @rpc(expected_exceptions=DomainError)
    def handle_paypal_webhook(self, payload, headers=None) -> dict:
        data = load_rpc(c.PayPalWebhook, {"payload": payload, "headers": headers or {}})
        event = paypal_orders.verified_event(self.paypal, self.settings, data["payload"],
                                             data["headers"])
        captured = paypal_orders.capture_approved(self.db, self.paypal, event)

        def work():
            result = paypal_orders.handle(self.db, self.settings, event, utcnow(), self.dispatch,
                                          captured)
            self.db.commit()
            return result

        return c.WebhookReceived().dump(self._retrying(work))

    # ------------------------------------------------------------ subscriptions

    @rpc(expected_exceptions=DomainError)
    def get_subscription(self, user_id) -> dict:
        user = self._user(user_id)
        return c.Subscription().dump(subscriptions.view(subscriptions.latest(self.db, user)))

    @rpc(expected_exceptions=DomainError)
    def cancel_subscription(self, user_id) -> dict:
        """Cancel the caller's subscription at the end of its paid period
        (asked of Stripe outside any transaction; Stripe's answer is applied
        like its ``customer.subscription.updated``). Repeating it changes nothing."""
        user = self._user(user_id)
        row = subscriptions.require_live(self.db, user)
        sub_id, done = row.id, row.cancel_at_period_end
        self.db.rollback()
        if not done:
            try:
                answer = self.stripe.cancel_at_period_end(sub_id)
            except PaymentProviderError as exc:
                log.error("cancelling a subscription failed: %s", exc)
                raise orders.provider_unavailable() from None

            def work():
                subscriptions.changed(self.db, self.settings, answer, utcnow(), self.dispatch)
                self.db.commit()

            self._retrying(work)
        return c.Subscription().dump(subscriptions.view(subscriptions.latest(self.db, user)))

    @rpc(expected_exceptions=DomainError)
    def portal_link(self, user_id) -> dict:
        """A link to Stripe's customer portal for the caller's own customer."""
        user = self._user(user_id)
        customer = subscriptions.portal_customer(self.db, user)
        self.db.rollback()
        try:
            url = self.stripe.portal_url(customer, self.settings.portal_return_url)
        except PaymentProviderError as exc:
            log.error("portal session failed: %s", exc)
            raise orders.provider_unavailable() from None
        return c.PortalLink().dump({"url": url})

    # ------------------------------------------------------------ operators

    @rpc(expected_exceptions=DomainError)
    def refund_order(self, order_id, amount=None) -> dict:
        """Refund (part of) a PayPal order through PayPal; the credits go back
        as for any refund."""
        data = load_rpc(c.RefundOrder, {"order_id": order_id, "amount": amount})
        order, amount = paypal_orders.refund_request(self.db, self.settings, data["order_id"],
                                                     data["amount"])
        refund = paypal_orders.send_refund(self.paypal, order, amount)

        def work():
            paypal_orders.apply_refund(self.db, self.settings, order, amount, refund, utcnow(),
                                       self.dispatch)
            self.db.commit()

        self._retrying(work)
        log.warning("order refunded through paypal", extra={"order_id": str(order.id),
                                                            "amount": amount})
        return c.Order().dump(orders.view(self.db.get(Order, order.id)))

    @rpc(expected_exceptions=DomainError)
    def adjust(self, user_id, amount, reason, idempotency_key) -> dict:
        data = load_rpc(c.Adjust, {"user_id": user_id, "amount": amount, "reason": reason,
                                   "idempotency_key": idempotency_key})

        def work():
            now = utcnow()
            account = plans.require_account(self.db, self.settings, data["user_id"], now,
                                            self.dispatch)
            entry, created = ledger.adjust(self.db, account, data["amount"], data["reason"],
                                           data["idempotency_key"], now)
            self.db.commit()
            return entry, created

        entry, created = self._retrying(work)
        if created:
            log.warning("ledger adjusted", extra={"user_id": str(data["user_id"]),
                                                  "amount": data["amount"]})
        return c.LedgerEntry().dump(ledger.view(entry))

    @rpc(expected_exceptions=DomainError)
    def verify_ledger(self, user_id=None, limit=None, cursor=None) -> dict:
        """One account (``user_id``), every account, or with ``limit`` a page of
        accounts in user id order: the answer's ``next_cursor`` asks for the
        next one (None after the last), and carries how many problems the
        earlier pages listed, so the whole walk lists at most
        :data:`audit.MAX_PROBLEMS` and its last page records the metrics."""
        query = load_rpc(c.LedgerVerifyQuery, {"user_id": user_id, "limit": limit,
                                                "cursor": cursor})
        if query["limit"] is None:
            result = audit.verify_ledger(self.db, query["user_id"])
            if query["user_id"] is None:  # the whole ledger: what the metrics report
                self._ledger_verified(len(result["problems"]))
        else:
            result, walk_problems = audit.verify_step(self.db, query["limit"], query["cursor"])
            if walk_problems is not None:  # the walk is over
                self._ledger_verified(walk_problems)
        if result["problems"]:
            log.error("ledger verification found %d problem(s)", len(result["problems"]))
        return c.LedgerVerification().dump(result)

    @staticmethod
    def _ledger_verified(problems: int) -> None:
        metrics.LEDGER_PROBLEMS.set(problems)
        metrics.LEDGER_VERIFIED_AT.set_to_current_time()

    @rpc(expected_exceptions=DomainError)
    def run_maintenance(self, tasks=None) -> dict:
        """Run the timers' work now (all of it, or the named ``tasks``):
        for operators, and for tests that cannot wait an hour."""
        names = MAINTENANCE_TASKS if tasks is None else tasks
        if not isinstance(names, list | tuple) or set(names) - set(MAINTENANCE_TASKS):
            raise DomainError("invalid_request", "unknown maintenance task", 400,
                              {"fields": {"tasks": [f"One of {list(MAINTENANCE_TASKS)}."]}})
        return {name: self._maintain(name) for name in MAINTENANCE_TASKS if name in names}

    def _maintain(self, task: str, now: datetime | None = None):
        """One maintenance task; the sweeps over accounts commit one account at a time."""
        db, settings, dispatch, now = self.db, self.settings, self.dispatch, now or utcnow()
        if task == "holds":
            return self._per_account(saga.stale_holds(db, settings, now, SWEEP_BATCH),
                                     lambda hold: saga.release_stale_hold(db, hold, now, dispatch))
        if task == "plans":
            return self._per_account(
                plans.expired_plans(db, now, SWEEP_BATCH),
                lambda user: plans.end_expired_plan(db, settings, user, now, dispatch))
        if task == "lots":
            return self._per_account(saga.accounts_with_expired_lots(db, now, SWEEP_BATCH),
                                     lambda user: saga.expire_lots_of(db, user, now))
        if task == "grants":
            granted = 0
            for _ in range(MAX_GRANT_BATCHES):  # every account due, a batch at a time
                due = plans.due_grants(db, now, SWEEP_BATCH)
                granted += self._per_account(
                    due, lambda user: plans.grant_month(db, settings, user, now))
                if len(due) < SWEEP_BATCH:
                    break
            return granted
        if task == "subscriptions":  # erased accounts' subscriptions, cancelled at Stripe
            return self._per_account(subscriptions.to_cancel(db, SWEEP_BATCH),
                                     self._cancel_erased)
        if task == "orders":
            result = orders.expire_pending(db, settings, now)
        else:
            result = retention.purge_payment_records(db, settings, now)
        db.commit()
        return result

    def _cancel_erased(self, sub_id: str) -> int:
        try:
            self.stripe.cancel_now(sub_id)
        except PaymentProviderError as exc:  # tried again at the next run
            if exc.status != 404:  # unknown to Stripe: nothing left to cancel
                log.error("cancelling an erased account's subscription failed: %s", exc)
                return 0
        return subscriptions.forget(self.db, sub_id)

    def _per_account(self, candidates: list, step) -> int:
        """``step(candidate)`` for each candidate, each in a transaction of its
        own: one account locked at a time, each account's events out with its
        commit, and a failure keeps what the accounts before it did. Returns
        the sum of what the steps return."""
        self.db.rollback()  # end the read that found the candidates
        done = 0
        for candidate in candidates:
            done += step(candidate)
            self.db.commit()
        return done

    # ------------------------------------------------------------ privacy

    def privacy_store(self, event: dict) -> parts.Store:
        """A big export part is stored through the storage service."""
        return parts.store_through_storage(self.storage, event["user_id"], event["request_id"])

    # ------------------------------------------------------------ events

    @event_handler("auth", "user_registered")
    def user_registered(self, event: dict) -> None:
        if not claim_event(self.db, processed_events, event["event_id"], "billing.user_registered"):
            return
        plans.open_account(self.db, self.settings, event["user_id"], utcnow(), self.dispatch)
        self.db.commit()

    def _claim(self, event: dict, consumer: str) -> bool:
        """Lock the user's account, then claim the event: a duplicate delivered
        at the same moment waits for the first and finds it claimed (instead
        of failing on the primary key and being retried)."""
        ledger.lock_account(self.db, event["user_id"])
        return claim_event(self.db, processed_events, event["event_id"], consumer)

    @event_handler("generation", "job_requested")
    def job_requested(self, event: dict) -> None:
        if not self._claim(event, "billing.job_requested"):
            return
        # the saga's hold, or a refusal while an erasure of the account is pending
        privacy_data.job_requested(self.db, self.settings, event, utcnow(), self.dispatch)
        self.db.commit()

    @event_handler("generation", "job_succeeded")
    def job_succeeded(self, event: dict) -> None:
        self._job_finished(event, "succeeded")

    @event_handler("generation", "job_failed")
    def job_failed(self, event: dict) -> None:
        self._job_finished(event, "failed")

    @event_handler("generation", "job_cancelled")
    def job_cancelled(self, event: dict) -> None:
        self._job_finished(event, "cancelled")

    def _job_finished(self, event: dict, outcome: str) -> None:
        if not self._claim(event, f"billing.job_{outcome}"):
            return
        saga.job_finished(self.db, event, outcome, utcnow(), self.dispatch)
        self.db.commit()

    # ------------------------------------------------------------ timers

    @timer("billing.housekeeping", HOUSEKEEPING_INTERVAL_SECONDS)
    def housekeeping(self) -> None:
        """Expired holds, ended plans, expired lots, orders that can no longer be
        paid, erased accounts' subscriptions to cancel at Stripe."""
        done = {task: self._maintain(task)
                for task in ("holds", "plans", "lots", "orders", "subscriptions")}
        if any(done.values()):
            log.info("billing housekeeping", extra=done)

    @timer("billing.grants", GRANT_INTERVAL_SECONDS, eager=True)
    def monthly_grants(self) -> None:
        granted = self._maintain("grants")
        if granted:
            log.info("monthly grants", extra={"accounts": granted})

    @timer("billing.retention", RETENTION_INTERVAL_SECONDS, eager=True)
    def payment_retention(self) -> None:
        purged = self._maintain("payments")
        if any(purged.values()):
            log.info("payment records past retention deleted", extra=purged)
