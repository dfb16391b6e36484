"""The privacy service: data-subject requests (export, erasure, restriction),
consent, policy versions, access logs, the published retention schedule and
personal-data breaches (:mod:`breaches`, for ``darkroom-ops breach``).

    nameko run --config deploy/config/privacy.yaml services.privacy.service:PrivacyService

Exports and erasures are orchestrated by events (see :mod:`requests`): this
service publishes ``privacy.export_requested`` / ``privacy.erasure_requested``
and records each service's answer; a service that is down answers when it
returns. Its own part (consents, acceptances, restriction, access logs) is
handled by its own handlers of those events, like everyone else's.
Entrypoints are thin: load the payload through its contract, call the domain
modules, dispatch events (into the outbox), commit, dump the answer.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import requests as http

from services.common import privacy_parts as parts
from services.common.contracts import load_rpc
from services.common.contracts import privacy as c
from services.common.db import Database, locked
from services.common.errors import DomainError, invalid_request, not_found
from services.common.ids import client_id, isoformat, trusted_id, utcnow
from services.common.messaging import EventPublisher, event_handler
from services.common.metrics import BREACHES_OVERDUE
from services.common.queues import RpcProxy, rpc
from services.common.races import first_wins
from services.common.service import DarkroomService, FromConfig
from services.common.timers import timer
from services.privacy import access_logs, archive, breaches, calls, consent, own_data, schedule
from services.privacy import requests as subject_requests
from services.privacy.models import Base, PrivacyRequest, outbox
from services.privacy.settings import PrivacySettings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
TICK_SECONDS = 2
PURGE_INTERVAL_SECONDS = 3600
RETENTION_WAIT_SECONDS = 3.0
# shorter than the gateway's RPC timeout (10 s): when auth is slow the user is
# told 503 and nothing is recorded, never 503 while the request goes ahead
REAUTH_TIMEOUT_SECONDS = 5.0
BREACH_METRIC_INTERVAL_SECONDS = 60


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return isoformat(value)
    return value


def _answering(record):
    def handler(self, event: dict) -> None:
        record(self, event)

    return handler


def _participants(cls):
    """For each service in :data:`~services.common.contracts.privacy.PARTICIPANTS`:
    its RPC proxy, ``self.<service>`` (retention schedules; auth's
    reauthentication and revocation, storage's objects), and the handlers of
    its two answers, ``<service>.export_part_ready`` and
    ``<service>.erasure_completed`` (methods ``<service>_export_part_ready``
    and ``<service>_erasure_completed``, whose names name their queues)."""
    for service in c.PARTICIPANTS:
        setattr(cls, service, RpcProxy(service))
        for answer, record in (("export_part_ready", cls._export_part),
                               ("erasure_completed", cls._erasure_part)):
            setattr(cls, f"{service}_{answer}",
                    event_handler(service, answer)(_answering(record)))
    return cls


@_participants
class PrivacyService(DarkroomService):
    name = "privacy"

    db = Database(migrations=MIGRATIONS, metadata=Base.metadata)
    state_metrics = staticmethod(subject_requests.state_metrics)  # gauges read at each scrape
    dispatch = EventPublisher(outbox=outbox)
    settings = FromConfig(PrivacySettings.from_config)
    # and, from :func:`_participants`, self.auth, self.billing... (RPC proxies)

    def _bounded_storage(self) -> calls.Bounded:
        return calls.Bounded(self.storage, "storage", self.settings.rpc_timeout_seconds)

    # ------------------------------------------------------------ requests

    @rpc(expected_exceptions=DomainError)
    def create_request(self, user_id, payload, credential_type=None) -> dict:
        """``credential_type``: how the caller signed in (``session`` or
        ``api_key``, as auth resolved it); an erasure needs a session and a
        fresh re-authentication (the password, checked by auth)."""
        data = load_rpc(c.CreateRequest, payload)
        user = trusted_id(user_id)
        now = utcnow()
        if data["type"] == "erasure":
            subject_requests.check_erasure_caller(credential_type, data.get("password"))
            existing = subject_requests.open_request(self.db, user, "erasure")
            if existing is not None:
                raise subject_requests.request_open("erasure", existing)
            calls.call(self.auth, "auth", "reauthenticate", str(user), data["password"],
                       data.get("totp_code"),
                       timeout=min(REAUTH_TIMEOUT_SECONDS, self.settings.rpc_timeout_seconds))

        return self._view(self._create(user, data["type"], now))

    @rpc(expected_exceptions=DomainError)
    def erase_as_operator(self, user_id, reason, immediate=False) -> dict:
        """``darkroom-ops users delete``: the same erasure as the owner's
        (grace period, mailed cancel link, every service's part, certificate),
        asked by an operator, who named the account to auth first; no session
        or password. ``reason`` goes to the request's log. ``immediate``
        (``users delete-minor``: a guardian reported a minor's account): no
        grace period and no cancel link; an erasure already waiting out its
        grace starts now instead."""
        if not isinstance(reason, str) or not reason.strip():
            raise invalid_request("say why the account is erased",
                                  fields={"reason": ["Missing data for required field."]})
        if not isinstance(immediate, bool):
            raise invalid_request("immediate must be a boolean",
                                  fields={"immediate": ["Not a valid boolean."]})
        user = trusted_id(user_id)
        now = utcnow()
        existing = subject_requests.open_request(self.db, user, "erasure") if immediate else None
        hastened = subject_requests.without_grace(self.db, existing, now) if existing else None
        if hastened is not None:
            request = hastened
        elif existing is not None:
            request = self.db.get(PrivacyRequest, existing)  # already past its grace
        else:
            request = self._create(user, "erasure", now, grace=not immediate)
        subject_requests.log(self.db, request.id, "asked_by_operator", now,
                             detail=reason.strip())
        self.db.commit()
        return self._view(request)

    def _create(self, user, request_type: str, now, grace: bool = True) -> PrivacyRequest:
        def create():
            request = subject_requests.create(self.db, self.settings, user, request_type, now,
                                              self.dispatch, grace=grace)
            self.db.commit()
            return request

        def already_open():  # the same request at the same moment: one wins
            raise subject_requests.request_open(
                request_type, subject_requests.open_request(self.db, user, request_type))

        request = first_wins(self.db, create, already_open)
        log.info("privacy request created", extra={"request_id": str(request.id),
                                                   "type": request.type})
        return request

    @rpc(expected_exceptions=DomainError)
    def list_requests(self, user_id, query=None) -> dict:
        data = load_rpc(c.RequestQuery, query)
        rows, next_cursor = subject_requests.list_for_user(self.db, trusted_id(user_id), data)
        # each item is dumped by _view already: dumping the page again would
        # dump its dates twice (a TypeError as soon as the list is not empty)
        return {"items": [self._view(r, with_download=False) for r in rows],
                "next_cursor": next_cursor}

    @rpc(expected_exceptions=DomainError)
    def get_request(self, user_id, request_id) -> dict:
        return self._view(subject_requests.get_for_user(self.db, trusted_id(user_id), request_id))

    @rpc(expected_exceptions=DomainError)
    def cancel_request(self, user_id, request_id, credential_type=None) -> dict:
        """The owner cancels an erasure in its grace period, with a session."""
        request = subject_requests.cancel(self.db, trusted_id(user_id), request_id, utcnow(),
                                          self.dispatch, credential_type)
        self.db.commit()
        log.info("erasure cancelled", extra={"request_id": str(request.id)})
        return self._view(request)

    @rpc(expected_exceptions=DomainError)
    def cancel_with_token(self, request_id, payload) -> dict:
        """The mailed cancel link, without signing in."""
        data = load_rpc(c.CancelRequest, payload)
        request = subject_requests.cancel_with_token(self.db, request_id, data.get("token"),
                                                     utcnow(), self.dispatch)
        self.db.commit()
        log.info("erasure cancelled with the mailed link", extra={"request_id": str(request.id)})
        return self._view(request, with_download=False)

    @rpc(expected_exceptions=DomainError)
    def get_certificate(self, request_id) -> dict:
        return c.Certificate().dump(subject_requests.certificate(self.db, request_id))

    def _view(self, request: PrivacyRequest, with_download: bool = True) -> dict:
        download = None
        if with_download and request.export_object_id is not None and request.user_id:
            try:
                download = self._bounded_storage().get_object(str(request.user_id),
                                                              str(request.export_object_id))
            except DomainError as exc:
                if exc.code != "not_found":
                    raise
        parts_ = subject_requests.parts_of(self.db, request.id)
        return c.RequestView().dump(
            subject_requests.view(self.settings, request, parts_, utcnow(), download))

    # ------------------------------------------------------------ consent and policy

    @rpc(expected_exceptions=DomainError)
    def get_consents(self, user_id) -> dict:
        return c.Consents().dump(consent.view(self.db, trusted_id(user_id)))

    @rpc(expected_exceptions=DomainError)
    def update_consents(self, user_id, payload, source="api") -> dict:
        data = load_rpc(c.UpdateConsents, payload)
        user = trusted_id(user_id)
        current, changed = consent.update(self.db, user, data, source, utcnow())
        if changed:
            self.dispatch("consent_changed", {
                "user_id": str(user), "marketing_email": current["marketing_email"],
                "analytics": current["analytics"],
                "refused_regions": current["refused_regions"],
                "policy_version": getattr(consent.current_policy(self.db), "version", None)})
        self.db.commit()
        return c.Consents().dump(current)

    @rpc(expected_exceptions=DomainError)
    def get_policy(self) -> dict:
        policy = consent.current_policy(self.db)
        if policy is None:
            raise not_found("policy")
        return c.Policy().dump(consent.policy_view(self.db, policy))

    @rpc(expected_exceptions=DomainError)
    def publish_policy(self, payload) -> dict:
        data = load_rpc(c.PublishPolicy, payload)

        def publish():
            policy = consent.publish(self.db, data, utcnow())
            answer = c.Policy().dump(consent.policy_view(self.db, policy))
            self.dispatch("policy_published", {"policy_version": policy.version,
                                               "material": bool(policy.material)})
            self.db.commit()
            return answer

        answer = first_wins(self.db, publish, DomainError(
            "policy_version_exists", f"policy version {data['version']} was published before", 409))
        log.warning("policy version published", extra={"version": data["version"],
                                                       "material": data["material"]})
        return answer

    @rpc(expected_exceptions=DomainError)
    def accept_policy(self, user_id, payload) -> dict:
        data = load_rpc(c.AcceptPolicy, payload)
        user = trusted_id(user_id)

        def accept():
            consent.accept(self.db, user, data["version"], utcnow())
            self.db.commit()

        first_wins(self.db, accept, lambda: None)  # accepted twice at once: once is kept
        return c.PolicyStatus().dump(consent.status(self.db, user))

    @rpc(expected_exceptions=DomainError)
    def policy_status(self, user_id) -> dict:
        return c.PolicyStatus().dump(consent.status(self.db, trusted_id(user_id)))

    # ------------------------------------------------------------ retention schedule

    @rpc(expected_exceptions=DomainError)
    def retention_schedule(self) -> dict:
        return {"items": schedule.own_items(self.settings)}

    @rpc(expected_exceptions=DomainError)
    def get_retention(self) -> dict:
        deadline = time.monotonic() + RETENTION_WAIT_SECONDS

        def ask(service):
            wait = calls.begin(getattr(self, service), service, "retention_schedule")
            return lambda: wait(deadline - time.monotonic())

        items, unavailable = schedule.gather(ask)
        return c.Retention().dump({"items": schedule.own_items(self.settings) + items,
                                   "unavailable": unavailable})

    # ------------------------------------------------------------ operators

    @rpc(expected_exceptions=DomainError)
    def report(self) -> dict:
        now = utcnow()
        return _jsonable({**subject_requests.report(self.db, self.settings, now),
                          "breaches_overdue": breaches.overdue(self.db, now)})

    @rpc(expected_exceptions=DomainError)
    def admin_list_requests(self, actor, query=None) -> dict:
        """``GET /v1/admin/privacy-requests``: requests with their due dates,
        overdue first."""
        self._require_operator(actor)
        data = load_rpc(c.OperatorRequestQuery, query)
        found = subject_requests.for_operators(self.db, utcnow(), data["status"] == "open")
        return c.OperatorRequests().dump({"items": found})

    @rpc(expected_exceptions=DomainError)
    def admin_breaches(self, actor) -> dict:
        """``GET /v1/admin/breaches``: :meth:`breach_list` for an operator, the
        regulator's deadline also as ``authority_deadline``."""
        self._require_operator(actor)
        return {"items": [{**incident, "authority_deadline": incident["deadline_at"]}
                          for incident in self.breach_list()["items"]]}

    # ------------------------------------------------------------ breaches (operators)

    @rpc(expected_exceptions=DomainError)
    def breach_open(self, payload) -> dict:
        data = load_rpc(c.OpenBreach, payload)
        now = utcnow()
        incident = breaches.open_incident(self.db, data["summary"], data["categories"],
                                          data["detected_at"], now)
        view = breaches.view(self.db, incident, now)
        self.db.commit()
        self.count_overdue_breaches()  # an incident detected long ago is overdue at once
        log.warning("breach incident opened", extra={"incident_id": view["id"]})
        return view

    @rpc(expected_exceptions=DomainError)
    def breach_affected(self, incident_id, payload) -> dict:
        """Compute the affected users within a window from the access logs
        (this service's), auth's accounts and storage's objects, as the
        incident's categories (or the given ones) say; store the set."""
        data = load_rpc(c.BreachWindow, payload)
        start, end = data["window_from"], data["window_to"]
        breaches.check_window(start, end)
        sources = breaches.sources_for(breaches.get(self.db, incident_id), data["categories"])
        window = {"from": isoformat(start), "to": isoformat(end)}
        found = {}
        for source in sources:
            if source == "access_logs":
                found[source] = breaches.access_log_users(self.db, start, end)
            else:
                method = "users_active_between" if source == "auth" else "owners_between"
                found[source] = calls.call(getattr(self, source), source, method, window,
                                           timeout=self.settings.rpc_timeout_seconds)
        self.db.rollback()
        incident = breaches.get(self.db, incident_id, lock=True)
        now = utcnow()
        result = breaches.record_affected(self.db, self.settings.pseudonym_key, incident,
                                          start, end, found, now)
        view = breaches.view(self.db, incident, now)
        self.db.commit()
        return {**result, "incident": view}

    @rpc(expected_exceptions=DomainError)
    def breach_notify(self, incident_id, limit=100) -> dict:
        """One batch of notices; call again while ``pending`` is not 0."""
        incident = breaches.get(self.db, incident_id, lock=True)
        result = breaches.notify_batch(self.db, self.settings.pseudonym_key, incident, utcnow(),
                                       self.dispatch, limit)
        self.db.commit()
        return result

    @rpc(expected_exceptions=DomainError)
    def breach_report(self, incident_id, payload) -> dict:
        data = load_rpc(c.BreachReport, payload)
        incident = breaches.get(self.db, incident_id, lock=True)
        report = breaches.build_report(self.db, incident, data["contact"], data["measures"],
                                       data["consequences"], utcnow())
        self.db.commit()
        self.count_overdue_breaches()
        log.warning("breach reported", extra={"incident_id": str(client_id(incident_id))})
        return report

    @rpc(expected_exceptions=DomainError)
    def breach_list(self) -> dict:
        return {"items": breaches.list_incidents(self.db, utcnow())}

    @timer("privacy.breach_gauge", BREACH_METRIC_INTERVAL_SECONDS, eager=True,
           once=False)  # a gauge of each replica
    def count_overdue_breaches(self) -> int:
        """The ``darkroom_privacy_breaches_overdue`` gauge (an alert can fire on it)."""
        overdue = len(breaches.overdue(self.db, utcnow()))
        self.db.rollback()
        BREACHES_OVERDUE.set(overdue)
        return overdue

    @rpc(expected_exceptions=DomainError)
    def retry_request(self, request_id) -> dict:
        result = subject_requests.retry(self.db, self.settings, request_id, utcnow(), self.dispatch)
        self.db.commit()
        log.warning("privacy request retried by an operator", extra=result)
        return result

    # ------------------------------------------------------------ this service's own part

    @event_handler("privacy", "export_requested")
    def export_requested(self, event: dict) -> None:
        """Recorded at once: the archive reads this service's data when it is built."""
        if "privacy" not in event["services"]:
            return
        about = own_data.ABOUT.format(days=self.settings.access_log_retention_days)
        self._export_part({"request_id": event["request_id"], "service": "privacy", "data": None,
                           "object_id": None, "about": about, "withheld": []})

    @event_handler("privacy", "erasure_requested")
    def erasure_requested(self, event: dict) -> None:
        if "privacy" not in event["services"]:
            return
        started = utcnow()
        tables = own_data.erase(self.db, event["user_id"])
        # kept (a legal obligation), as the keyed hash only; no notice any more
        breaches.forget_user(self.db, self.settings.pseudonym_key, trusted_id(event["user_id"]))
        tables["dead_letters"] = self.dead_letters(event["user_id"])
        result = parts.erasure_result(event["request_id"], "privacy", started, utcnow(), tables)
        self._erasure_part({**result, "started_at": started, "finished_at": utcnow()})

    # ------------------------------------------------------------ the other services' answers
    # (their handlers are made by :func:`_participants`)

    def _export_part(self, event: dict) -> None:
        request, outcome = self._record_part(subject_requests.record_export_part, event)
        if request is None:
            log.info("export part ignored (answered before, or the request is closed)",
                     extra={"request_id": str(event["request_id"]), "service": event["service"]})
        elif outcome == "assemble":
            self._assemble(request.id)

    def _erasure_part(self, event: dict) -> None:
        _, outcome = self._record_part(subject_requests.record_erasure_part, event)
        if outcome == "completed":
            log.info("erasure completed", extra={"request_id": str(event["request_id"])})

    def _record_part(self, record, event: dict) -> tuple[PrivacyRequest | None, str | None]:
        """Record one service's answer with ``record``, advance its request and
        commit. Returns ``(request, outcome)``; ``request`` is None when the
        answer was ignored (answered before, or the request is closed)."""
        now = utcnow()
        request = record(self.db, event, now)
        outcome = subject_requests.advance(self.db, self.settings, request, now, self.dispatch) \
            if request is not None else None
        self.db.commit()
        return request, outcome

    # ------------------------------------------------------------ the archive

    def _assemble(self, request_id) -> None:
        """Build, store and announce an export's archive. Never raises: a
        failure is recorded and the timer tries again (up to a bound)."""
        now = utcnow()
        request = subject_requests.claim_assembly(self.db, self.settings, request_id, now)
        if request is None:
            self.db.rollback()
            return
        user_id = str(request.user_id)
        parts_ = []
        for part in subject_requests.parts_of(self.db, request.id):
            data = None
            if part.service == "privacy":
                data = own_data.export(self.db, request.user_id,
                                       self.settings.access_log_retention_days)
            elif part.data is not None:
                data = json.loads(part.data)
            parts_.append(archive.Part(part.service, data,
                                       str(part.object_id) if part.object_id else None,
                                       part.about or "", list(part.withheld or [])))
        self.db.commit()
        storage = self._bounded_storage()
        timeout = self.settings.rpc_timeout_seconds
        built = None
        try:
            built = archive.build(storage, http, str(request_id), user_id, parts_, now,
                                  self.settings.work_dir, timeout)
            stored = archive.store(storage, http, user_id, str(request_id), built, timeout)
        except (archive.ArchiveError, DomainError, OSError) as exc:
            self.db.rollback()
            subject_requests.assembly_failed(self.db, self.settings, request_id, str(exc), utcnow())
            self.db.commit()
            log.warning("export archive not built", extra={"request_id": str(request_id),
                                                           "error": str(exc)[:500]})
            return
        finally:
            if built is not None:
                archive.discard(built)
        request = locked(self.db, PrivacyRequest, request.id)
        leftovers = subject_requests.finish_export(self.db, request, stored, utcnow(),
                                                   self.dispatch)
        self.db.commit()
        log.info("export archive stored", extra={"request_id": str(request_id),
                                                 "size": built.size, "media": built.media})
        for object_id in leftovers:  # the big parts, now inside the archive
            try:
                storage.delete_object(user_id, str(object_id))
            except DomainError:
                log.warning("a stored export part was not deleted; it expires with its retention",
                            extra={"object_id": str(object_id)})

    # ------------------------------------------------------------ access logs

    @event_handler("gateway", "requests_logged")
    def requests_logged(self, event: dict) -> None:
        """A batch of access-log facts, in one transaction. The same batch
        delivered again, or twice at once, adds nothing the second time: the
        insert skips the ids already stored (services/privacy/access_logs.py)."""
        access_logs.store_all(self.db, self.settings.pseudonym_key, event["entries"])
        self.db.commit()

    @timer("privacy.retention", PURGE_INTERVAL_SECONDS, eager=True)
    def purge_access_logs(self) -> int:
        purged = 0
        while True:
            batch = access_logs.purge(self.db, utcnow(), self.settings.access_log_retention_days)
            self.db.commit()
            purged += batch
            if batch < access_logs.PURGE_BATCH:
                break
        if purged:
            log.info("access logs past retention deleted", extra={"rows": purged})
        return purged

    # ------------------------------------------------------------ the timer

    def _revoke_after_grace(self) -> int:
        """Every session and API key of an account whose erasure's grace
        period is over, revoked by auth, one request at a time with the
        request locked (a cancellation waits, then finds it not
        cancellable). Auth away: the request stays as it is and the next
        tick tries again."""
        revoked = 0
        for request_id in subject_requests.grace_over(self.db, utcnow()):
            self.db.rollback()
            request = subject_requests.claim_revocation(self.db, request_id, utcnow())
            if request is None:
                continue
            try:
                counts = calls.call(self.auth, "auth", "revoke_all", str(request.user_id),
                                    timeout=min(REAUTH_TIMEOUT_SECONDS,
                                                self.settings.rpc_timeout_seconds))
                detail = ", ".join(f"{v} {k}" for k, v in sorted((counts or {}).items()))
            except DomainError as exc:
                if exc.code != "not_found":  # no account: nothing to revoke
                    self.db.rollback()
                    log.warning("credentials not revoked yet; trying again",
                                extra={"request_id": str(request_id), "error": exc.code})
                    continue
                detail = "no account"
            subject_requests.credentials_revoked(self.db, request, utcnow(), detail)
            self.db.commit()
            revoked += 1
            log.info("erasure's grace period over: credentials revoked",
                     extra={"request_id": str(request_id)})
        self.db.rollback()
        return revoked

    @timer("privacy.tick", TICK_SECONDS)
    def tick(self) -> None:
        """Revoke the credentials of accounts whose erasure's grace is over,
        start erasures the settle time after that, ask again for late parts,
        build archives whose parts are all in."""
        self._revoke_after_grace()
        result = subject_requests.tick(self.db, self.settings, utcnow(), self.dispatch)
        self.db.commit()
        if any(result.values()):
            log.info("privacy timer", extra=result)
        for request_id in subject_requests.buildable_exports(self.db, self.settings, utcnow()):
            self._assemble(request_id)
