"""The generation service: jobs from submit to stored output (docs/design.md §4).

    nameko run --config deploy/config/generation.yaml \
        services.generation.service:GenerationService

The saga: ``submit`` creates the job and publishes ``generation.job_requested``;
billing answers ``billing.credits_reserved`` (the job becomes runnable and the
worker that handles the event runs the most urgent runnable job) or
``billing.credits_insufficient`` (rejected). A run ends in
``generation.job_succeeded`` (outputs committed in storage first) or
``generation.job_failed``; billing captures or releases. Every transition is
committed together with the event that announces it (the outbox).

A running job holds a lease its worker renews from a heartbeat (every third
of the lease) whatever a provider call takes; a worker killed mid-job stops
renewing it, and the recovery timer puts the job back in the queue and
publishes ``generation.job_requeued`` so another worker runs it.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

from services.common import privacy_parts as parts
from services.common import spending
from services.common.bounded_rpc import BoundedProxy, RpcTimeout
from services.common.concurrency import offload
from services.common.contracts import generation as c
from services.common.contracts import load_rpc
from services.common.db import Database, claim_event
from services.common.errors import DomainError, invalid_request
from services.common.idempotency import request_hash
from services.common.ids import trusted_id, utcnow
from services.common.messaging import EventPublisher, event_handler
from services.common.privacy_parts import ErasurePendingMirror, PrivacyParticipant
from services.common.queues import RpcProxy, rpc
from services.common.service import DarkroomService, FromConfig
from services.common.timers import timer
from services.generation import deliveries, disclosures, jobs, runner, webhooks
from services.generation import privacy as privacy_data
from services.generation.models import outbox, processed_events
from services.generation.prompts import Prompts
from services.generation.providers.router import Router, build_router
from services.generation.quotes import QuoteCache, default_pricing, pricing
from services.generation.settings import GenerationSettings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
RECOVERY_INTERVAL_SECONDS = 10
WEBHOOK_INTERVAL_SECONDS = 2
# how long a job's view waits for storage to sign its outputs' URLs (then goes without)
SIGN_TIMEOUT_SECONDS = 5.0


def make_run_slots(config) -> threading.BoundedSemaphore:
    """How many jobs this process runs at once (``GENERATION.MAX_RUNNING_JOBS``):
    the rest wait ``reserved``, most urgent first, and a worker that finishes
    a job takes the next one. Workers stay free for RPCs and events."""
    limit = GenerationSettings.from_config(config).max_running_jobs
    return threading.BoundedSemaphore(limit)  # green under nameko run


def make_quotes(config) -> QuoteCache:
    return QuoteCache(GenerationSettings.from_config(config).quote_cache_seconds)


def make_webhook_sender(config) -> deliveries.Sender:
    settings = GenerationSettings.from_config(config)
    return deliveries.Sender(settings.webhook_concurrency, settings.webhook_receiver_concurrency)


def make_router(config) -> Router:
    """Built once per process: its circuit breakers remember failures across
    jobs. CPU-heavy rendering runs off the hub."""
    return build_router(config, offload=offload)


class GenerationService(PrivacyParticipant, ErasurePendingMirror, DarkroomService):
    name = "generation"
    privacy = privacy_data  # its part of privacy requests

    db = Database(migrations=MIGRATIONS)
    state_metrics = staticmethod(jobs.state_metrics)  # gauges read at each scrape
    # a submit's job_requested leaves right after its reply (committed before it)
    dispatch = EventPublisher(outbox=outbox, after_reply=("submit",))
    settings = FromConfig(GenerationSettings.from_config)
    run_slots = FromConfig(make_run_slots)
    router = FromConfig(make_router)
    prompts = FromConfig(Prompts.from_config)  # templates, prompt assist, moderation
    quotes = FromConfig(make_quotes)  # billing's prices, kept a minute
    webhook_sender = FromConfig(make_webhook_sender)  # the pool of webhook attempts
    billing = RpcProxy("billing")
    storage = RpcProxy("storage")
    auth = RpcProxy("auth")

    # ------------------------------------------------------------ the API

    @rpc(expected_exceptions=DomainError)
    def submit(self, user_id, payload, idempotency_key=None, dry_run=False) -> dict:
        """Create a job (or with ``dry_run`` only quote its price). Moderation
        and every check run before any credit is held."""
        data = load_rpc(c.SubmitJob, payload)
        if data["type"] == "image-to-video" and not data["template"]:
            data["duration_s"] = data["duration_s"] or c.DEFAULT_VIDEO_DURATION_S
        if data["model"]:
            self._check_model(data["model"], data["type"])  # 400 unknown_model
        user = trusted_id(user_id)
        # a quote spends nothing; a job: auth is asked now and answers while the
        # checks below run, and its answer is awaited before anything is written
        # and before any other refusal (email_unverified first, as ever)
        verified = None if dry_run else spending.VerifiedCheck(
            self.auth, user, self.settings.rpc_timeout_seconds)
        try:
            return self._submit(user_id, user, data, idempotency_key, dry_run,
                                verified or (lambda: None))
        except DomainError:
            if verified is not None:
                verified()
            raise
        finally:
            if verified is not None:
                verified.close()

    def _submit(self, user_id, user, data, idempotency_key, dry_run, verified) -> dict:
        privacy_data.check_may_run(self.db, user)  # 403 processing_restricted, erasure_pending
        privacy_data.check_route_allowed(self.db, self.router, user, data["type"],
                                         data["model"] or None)  # 409
        if data["webhook_url"]:
            self._check_webhook_url(data["webhook_url"])
        # fields added later count only when given: earlier requests keep their hashes
        digest = request_hash({k: v for k, v in data.items()
                               if k not in ("model", "webhook_events") or v})
        if not dry_run:
            existing = jobs.find_idempotent(self.db, user, idempotency_key, digest)
            if existing is not None:
                verified()
                return self._view(existing)
        expansion = self.prompts.expand(data)  # 400/404 template, 422 content policy
        if data["source_image_id"]:
            self.storage.get_source(user_id, str(data["source_image_id"]))  # 404 if not theirs
        quote = self.quotes.quote(pricing(data, expansion), self.billing.quote)
        if dry_run:
            return c.PriceQuote().dump(quote)
        verified()
        job, created = jobs.submit(self.db, self.settings, user, data, expansion, quote["price"],
                                   idempotency_key, digest, utcnow(), self.dispatch)
        self.db.commit()
        if created:
            log.info("job submitted", extra={"job_id": str(job.id), "type": job.type})
        return self._view(job)

    @rpc(expected_exceptions=DomainError)
    def get_job(self, user_id, job_id) -> dict:
        return self._view(jobs.get_job(self.db, trusted_id(user_id), job_id))

    @rpc(expected_exceptions=DomainError)
    def list_jobs(self, user_id, query=None) -> dict:
        data = load_rpc(c.JobQuery, query)
        rows, next_cursor = jobs.list_jobs(self.db, trusted_id(user_id), data)
        positions = jobs.queue_positions(self.db, rows)
        items = [jobs.view(job, positions[job.id]) for job in rows]
        page = c.JobPage().dump({"items": items, "next_cursor": next_cursor})
        self._add_output_urls(user_id, page["items"])
        return page

    @rpc(expected_exceptions=DomainError)
    def list_webhook_deliveries(self, user_id, job_id, query=None) -> dict:
        """The deliveries of the user's own job, newest first; 404 for anyone else's."""
        data = load_rpc(c.WebhookDeliveryQuery, query)
        job = jobs.get_job(self.db, trusted_id(user_id), job_id)
        rows, next_cursor = deliveries.list_for_job(self.db, job.id, data["limit"],
                                                    data["cursor"])
        return c.WebhookDeliveryPage().dump({"items": [deliveries.view(row) for row in rows],
                                             "next_cursor": next_cursor})

    @rpc(expected_exceptions=DomainError)
    def list_disclosures(self, user_id, query=None) -> dict:
        """The user's own disclosure log (each request sent to a vendor), newest first."""
        data = load_rpc(c.DisclosureQuery, query)
        rows, next_cursor = disclosures.list_disclosures(self.db, trusted_id(user_id), data)
        return c.DisclosurePage().dump({"items": [disclosures.view(row) for row in rows],
                                        "next_cursor": next_cursor})

    @rpc(expected_exceptions=DomainError)
    def cancel_job(self, user_id, job_id) -> dict:
        job = jobs.cancel(self.db, self.settings, trusted_id(user_id), job_id, utcnow(),
                          self.dispatch)
        self.db.commit()
        return self._view(job)

    @rpc(expected_exceptions=DomainError)
    def list_templates(self) -> dict:
        return {"items": self.prompts.templates.list_templates()}

    @rpc(expected_exceptions=DomainError)
    def list_models(self) -> dict:
        """The providers a job may name as ``model``: job types, region, and
        billing's price of a default job of each type on it."""
        items = [{"name": name, "job_types": list(types), "region": self.router.region_of(name),
                  "prices": [{"job_type": t, **self.quotes.quote(default_pricing(t, name),
                                                                self.billing.quote)}
                             for t in types]}
                 for name, types in self.router.models().items()]
        return c.ModelList().dump({"items": items})

    def _check_model(self, model: str, job_type: str) -> None:
        if job_type not in self.router.models().get(model, ()):
            raise DomainError("unknown_model", f"there is no model {model!r} for {job_type} "
                              "(GET /v1/models lists them)", 400, {"model": model})

    # ------------------------------------------------------------ privacy

    def privacy_store(self, event: dict) -> parts.Store:
        """A big export part is stored through the storage service."""
        return parts.store_through_storage(self.storage, event["user_id"], event["request_id"])

    @event_handler("privacy", "consent_changed")
    def privacy_consent_changed(self, event: dict) -> None:
        privacy_data.apply_refused_regions(self.db, event["user_id"],
                                           event.get("refused_regions"), event["occurred_at"])
        self.db.commit()

    @event_handler("privacy", "restriction_changed")
    def privacy_restriction_changed(self, event: dict) -> None:
        privacy_data.apply_restriction(self.db, event["user_id"], event["restricted"],
                                       event["occurred_at"])
        self.db.commit()

    # ------------------------------------------------------------ operators

    @rpc(expected_exceptions=DomainError)
    def find_jobs(self, query=None) -> dict:
        data = load_rpc(c.FindJobs, query)
        rows = jobs.find_jobs(self.db, data["status"], data["since"], data["reason"], data["limit"],
                              newest_first=data["order"] == "newest")
        return {"items": c.OpsJobView(many=True).dump(
            [{**jobs.view(job), "user_id": job.user_id} for job in rows])}

    @rpc(expected_exceptions=DomainError)
    def find_webhook_deliveries(self, query=None) -> dict:
        """Operators: ``darkroom-ops webhooks list``."""
        data = load_rpc(c.FindWebhookDeliveries, query)
        rows = deliveries.find(self.db, data["job_id"], data["user_id"], data["status"],
                               data["limit"])
        return {"items": c.OpsWebhookDeliveryView(many=True).dump(
            [{**deliveries.view(row), "user_id": row.user_id} for row in rows])}

    @rpc(expected_exceptions=DomainError)
    def redeliver_webhook(self, delivery_id) -> dict:
        """Operators: ``darkroom-ops webhooks redeliver``."""
        row = deliveries.redeliver(self.db, delivery_id, utcnow())
        self.db.commit()
        log.info("webhook redelivery requested", extra={"delivery_id": str(row.id)})
        return c.OpsWebhookDeliveryView().dump({**deliveries.view(row), "user_id": row.user_id})

    @rpc(expected_exceptions=DomainError)
    def replay_job(self, job_id) -> dict:
        return self._replay_job(job_id)

    def _replay_job(self, job_id, actor: str | None = None) -> dict:
        job = jobs.replay(self.db, job_id, utcnow(), self.dispatch)
        # a new hold on the owner's credits, refused as a submit would be; a
        # refusal rolls the replay back
        privacy_data.check_may_run(self.db, job.user_id)
        spending.require_verified(self.auth, job.user_id, self.settings.rpc_timeout_seconds)
        self.db.commit()
        log.info("job replayed", extra={"job_id": str(job.id), "attempt": job.attempt,
                                        "actor": actor})
        return c.OpsJobView().dump({**jobs.view(job), "user_id": job.user_id})

    @rpc(expected_exceptions=DomainError)
    def cancel_job_as_operator(self, job_id) -> dict:
        """``darkroom-ops jobs cancel``: any account's job that has not
        started (409 ``not_cancellable`` otherwise); billing releases its hold."""
        return self._cancel_job(job_id)

    def _cancel_job(self, job_id, actor: str | None = None) -> dict:
        job = jobs.cancel_any(self.db, self.settings, job_id, utcnow(), self.dispatch)
        self.db.commit()
        log.warning("job cancelled by an operator", extra={"job_id": str(job.id), "actor": actor})
        return c.OpsJobView().dump({**jobs.view(job), "user_id": job.user_id})

    # the same for the HTTP API's operators (docs/api.md "Operators"): the actor checked first

    @rpc(expected_exceptions=DomainError)
    def admin_find_jobs(self, actor, query=None) -> dict:
        self._require_operator(actor)
        return self.find_jobs(query)

    @rpc(expected_exceptions=DomainError)
    def admin_replay_job(self, actor, job_id) -> dict:
        return self._replay_job(job_id, actor=self._require_operator(actor))

    @rpc(expected_exceptions=DomainError)
    def admin_cancel_job(self, actor, job_id) -> dict:
        return self._cancel_job(job_id, actor=self._require_operator(actor))

    # ------------------------------------------------------------ the saga

    @event_handler("billing", "credits_reserved")
    def credits_reserved(self, event: dict) -> None:
        """The job may run: run reserved jobs while there are free slots. An
        event seen before still runs them: the delivery that claimed it may
        have failed after its commit (the database going away as the run
        began), and nothing else would start the job it made runnable."""
        if claim_event(self.db, processed_events, event["event_id"],
                       "generation.credits_reserved"):
            runnable = jobs.credits_reserved(self.db, self.settings, event, utcnow(),
                                             self.dispatch)
            self.db.commit()
        else:
            runnable = True
        if runnable:
            self._run_next()

    @event_handler("billing", "credits_insufficient")
    def credits_insufficient(self, event: dict) -> None:
        if not claim_event(self.db, processed_events, event["event_id"],
                           "generation.credits_insufficient"):
            return
        jobs.credits_insufficient(self.db, self.settings, event, utcnow(), self.dispatch)
        self.db.commit()

    @event_handler("billing", "credits_released")
    def credits_released(self, event: dict) -> None:
        """A hold released as ``expired``: the job fails ``hold_expired``."""
        if event["reason"] != "expired" or not claim_event(
                self.db, processed_events, event["event_id"], "generation.credits_released"):
            return
        jobs.credits_released(self.db, self.settings, event, utcnow(), self.dispatch)
        self.db.commit()

    @event_handler("generation", "job_requeued")
    def job_requeued(self, event: dict) -> None:
        """A job whose worker died is runnable again: run the most urgent one."""
        self._run_next()

    @timer("generation.recovery", RECOVERY_INTERVAL_SECONDS)
    def recover(self) -> None:
        """Jobs whose lease ran out (their worker was killed) go back to the
        queue; jobs past their hold's expiry fail ``hold_expired``."""
        requeued = jobs.requeue_expired_leases(self.db, utcnow())
        for job_id in requeued:
            self.dispatch("job_requeued", {"job_id": job_id})
        self.db.commit()
        if requeued:
            log.warning("requeued %d job(s) whose worker stopped", len(requeued))
        if jobs.fail_expired_holds(self.db, self.settings, utcnow(), self.dispatch):
            self.db.commit()

    # ------------------------------------------------------------ webhooks

    @timer("generation.webhooks", WEBHOOK_INTERVAL_SECONDS, once=False)  # rows leased
    def deliver_webhooks(self) -> None:
        """Hand the due webhook deliveries to the process's pool (as many as
        it has free slots, at most a few per receiver, none for a receiver
        that is backed off) and return: each attempt runs on its own green
        thread with its deadline, so a slow receiver delays only its own."""
        sender, settings = self.webhook_sender, self.settings
        now = utcnow()
        deliveries.forget_receivers(self.db, now)
        due = deliveries.take_due(
            self.db, now, sender.free(),
            lease_seconds=settings.webhook_timeout_seconds + deliveries.LEASE_MARGIN_SECONDS,
            per_receiver=sender.per_receiver, in_flight=sender.in_flight())
        self.db.commit()
        if not due:
            return
        guard = webhooks.UrlGuard(settings.webhook_allow)
        backoff = settings.receiver_backoff()
        secrets: dict = {}
        for delivery in due:
            try:
                if delivery.user_id not in secrets:
                    secrets[delivery.user_id] = self.auth.get_webhook_secret(
                        str(delivery.user_id))["secret"]
            except DomainError as exc:  # the account is gone: nobody to sign for
                deliveries.record(self.db, delivery, webhooks.Delivery(False, False, None,
                                                                       exc.code),
                                  utcnow(), settings.webhook_max_tries, backoff)
                self.db.commit()
                continue
            sender.start(delivery.receiver, functools.partial(
                deliveries.attempt, self.db.get_bind(), delivery.id, secrets[delivery.user_id],
                guard=guard, timeout_s=settings.webhook_timeout_seconds,
                max_tries=settings.webhook_max_tries, backoff=backoff))

    def _check_webhook_url(self, url: str) -> None:
        try:
            webhooks.UrlGuard(self.settings.webhook_allow).check(url)
        except webhooks.UnsafeUrl as exc:
            raise invalid_request("the webhook URL cannot be called",
                                  fields={"webhook_url": [exc.message]}) from None

    # ------------------------------------------------------------ running

    def _run_next(self) -> None:
        """Run reserved jobs while this process has a free run slot (runner.Worker)."""
        runner.Worker(self.db, self.settings, self.router, self.storage,
                      self.dispatch).run_next(self.run_slots)

    def _view(self, job) -> dict:
        view = c.JobView().dump(jobs.view(job, jobs.queue_position(self.db, job)))
        self._add_output_urls(job.user_id, [view])
        return view

    def _add_output_urls(self, user_id, views: list[dict]) -> None:
        """Give each (dumped) job view its ``output_urls``: for a succeeded
        job, storage's signed URLs of its outputs still in the gallery (one
        ``storage.sign_outputs`` call for all the views, which storage answers
        for ``user_id``'s objects only); ``[]`` for any other job. If storage
        does not answer in time the field is left out of the succeeded jobs:
        the job is still shown."""
        wanted = [oid for view in views if view["status"] == c.JobState.SUCCEEDED
                  for oid in view["outputs"]]
        for view in views:
            view["output_urls"] = []
        if not wanted:
            return
        try:
            signed = BoundedProxy(self.storage, SIGN_TIMEOUT_SECONDS, "storage").sign_outputs(
                str(user_id), {"object_ids": wanted})["items"]
        except (RpcTimeout, DomainError) as exc:
            log.warning("output URLs left out: %s", exc)
            signed = None
        by_id = {item["id"]: item for item in signed or ()}
        for view in views:
            if view["status"] == c.JobState.SUCCEEDED:
                if signed is None:
                    del view["output_urls"]
                else:
                    view["output_urls"] = [by_id[oid] for oid in view["outputs"] if oid in by_id]
