"""The operators' API (docs/api.md "Operators"): failed jobs, dead letters,
privacy requests, users and breach incidents, for the web console's operator
pages, over the services' ``admin_*`` RPCs.

Only an administrator signed in with a session gets past
:func:`~gateway.auth.require_operator`, before the request is even parsed
(403 ``admin_required`` for anyone else, an API key included); each RPC takes the caller's user id (the actor)
first and the service checks it again with auth before it acts
(services/common/operators.py). Nothing is decided here. Every answer is
``Cache-Control: no-store``.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from flask import current_app

from gateway.api.common import Blueprint, call, errors, given, no_store, present
from gateway.auth import current_principal, require_operator
from services.common.contracts import admin as c
from services.common.contracts import auth as auth_contracts
from services.common.contracts import generation as generation_contracts
from services.common.contracts import privacy as privacy_contracts
from services.common.errors import DomainError, not_found
from services.common.observability import correlation_id

log = logging.getLogger("gateway.admin")

admin_blp = Blueprint("admin", __name__, url_prefix="/v1/admin",
                      description="Operators (administrators signed in with a session): failed "
                                  "jobs, dead letters, privacy requests, users, breach incidents")
admin_blp.after_request(no_store)

#: the services whose dead letters are listed (each lists only its own queues)
SERVICES = ("auth", "billing", "generation", "notifications", "privacy", "storage")


def as_operator(schema, method: str, *args):
    """:func:`call` with the caller's user id (the actor) first."""
    return call(schema, method, current_principal().user_id, *args)


# ------------------------------------------------------------ jobs


@admin_blp.route("/jobs", methods=["GET"])
@require_operator
@admin_blp.arguments(c.JobQuery, location="query")
@admin_blp.response(200, c.JobList)
def jobs(query):
    """Jobs by status (failed unless told), last change and error code, newest
    change first, with their error and owner"""
    if query.get("since") is not None:
        query["since"] = query["since"].isoformat()
    return as_operator(c.JobList, "generation.admin_find_jobs", {**given(query), "order": "newest"})


@admin_blp.route("/jobs/<uuid:job_id>/replay", methods=["POST"])
@require_operator
@admin_blp.response(200, generation_contracts.OpsJobView)
@errors(403, 409)
def replay_job(job_id):
    """Replay a failed job as a new attempt (billed again, released or captured like
    any other: a job that then succeeds is charged once); 409 not_replayable"""
    return as_operator(generation_contracts.OpsJobView, "generation.admin_replay_job", str(job_id))


@admin_blp.route("/jobs/<uuid:job_id>/cancel", methods=["POST"])
@require_operator
@admin_blp.response(200, generation_contracts.OpsJobView)
@errors(403, 409)
def cancel_job(job_id):
    """Cancel any account's job that has not started (its hold released); 409
    not_cancellable"""
    return as_operator(generation_contracts.OpsJobView, "generation.admin_cancel_job", str(job_id))


# ------------------------------------------------------------ dead letters


def _dead_letters_of(pool, service: str, actor: str, correlation: str | None):
    """``(items, None)`` from ``service``, or ``(None, service)`` when it did
    not answer; a refusal (403 admin_required) is raised."""
    try:
        with pool.get(correlation=correlation) as proxy:
            answer = getattr(proxy, service).admin_dead_letters(actor)
    except DomainError as exc:
        if exc.code != "service_unavailable":
            raise
        return None, service
    except Exception as exc:  # a service that failed: shown as unavailable, the rest listed
        log.warning("dead letters of %s: %s", service, exc)
        return None, service
    return [{**queue, "service": service} for queue in answer["items"]], None


@admin_blp.route("/dead-letters", methods=["GET"])
@require_operator
@admin_blp.response(200, c.DeadLetters)
def dead_letters():
    """Every service's non-empty dead-letter queues, each with up to 10 letters
    (peeked: they stay queued; no bodies); services that did not answer are named
    in unavailable"""
    pool = current_app.extensions["darkroom"].rpc
    actor, correlation = current_principal().user_id, correlation_id.get()
    with ThreadPoolExecutor(max_workers=len(SERVICES)) as executor:  # one wait, not six
        answers = list(executor.map(
            lambda service: _dead_letters_of(pool, service, actor, correlation), SERVICES))
    return present(c.DeadLetters, {
        "items": [queue for items, _ in answers for queue in items or []],
        "unavailable": [service for _, service in answers if service]})


@admin_blp.route("/dead-letters/<string:service>/<string:queue>/replay", methods=["POST"])
@require_operator
@admin_blp.response(200, c.DeadLettersReplayed)
@errors(403)
@admin_blp.arguments(c.ReplayDeadLetters, required=False)
def replay_dead_letters(payload, service, queue):
    """Replay a service's dead-letter queue (dlq.<queue>) to the queue that failed
    each letter: at most limit, all that are there now without it; 404 not_found
    for a queue that is not that service's"""
    if service not in SERVICES:
        raise not_found("service")
    return as_operator(c.DeadLettersReplayed, f"{service}.admin_replay_dead_letters", queue,
                       (payload or {}).get("limit"))


# ------------------------------------------------------------ privacy requests, breaches


@admin_blp.route("/privacy-requests", methods=["GET"])
@require_operator
@admin_blp.arguments(privacy_contracts.OperatorRequestQuery, location="query")
@admin_blp.response(200, privacy_contracts.OperatorRequests)
def privacy_requests(query):
    """Privacy requests with their due dates (open ones unless status=all), the
    overdue first, then by due date"""
    return as_operator(privacy_contracts.OperatorRequests, "privacy.admin_list_requests", query)


@admin_blp.route("/breaches", methods=["GET"])
@require_operator
@admin_blp.response(200, privacy_contracts.BreachList)
def breaches():
    """Breach incidents with the regulator's deadline (detection + 72 hours): open
    ones first, nearest deadline first"""
    return as_operator(privacy_contracts.BreachList, "privacy.admin_breaches")


# ------------------------------------------------------------ users


@admin_blp.route("/users", methods=["GET"])
@require_operator
@admin_blp.arguments(auth_contracts.UserQuery, location="query")
@admin_blp.response(200, auth_contracts.OperatorUserPage)
def users(query):
    """Accounts, newest first; email: only the addresses containing it"""
    return as_operator(auth_contracts.OperatorUserPage, "auth.admin_list_users", given(query))


@admin_blp.route("/users/<uuid:user_id>/disable", methods=["POST"])
@require_operator
@admin_blp.response(200, auth_contracts.UserDisabled)
@errors(403, 409)
def disable_user(user_id):
    """Disable an account: it cannot sign in, and every session and API key it has
    is revoked; 409 cannot_disable_self for the caller's own"""
    return as_operator(auth_contracts.UserDisabled, "auth.admin_disable_user", str(user_id))


@admin_blp.route("/users/<uuid:user_id>/enable", methods=["POST"])
@require_operator
@admin_blp.response(200, auth_contracts.UserDisabled)
@errors(403)
def enable_user(user_id):
    """Enable a disabled account again (it signs in afresh: revoked credentials
    stay revoked)"""
    return as_operator(auth_contracts.UserDisabled, "auth.admin_enable_user", str(user_id))
