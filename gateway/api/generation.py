"""Generation (docs/api.md "Generation"), over the generation service's RPC.

Templates and models (public), submitting a job (verified email; ``Idempotency-Key``;
``?dry_run=true`` quotes the price without creating anything; ``Prefer: wait=N``
answers 200 with the job if it ends within N seconds), the caller's jobs,
cancelling one, and a server-sent event stream of one job's progress.

**Synchronous mode** (``Prefer: wait=N``, RFC 7240; the rule is
``contracts.generation.prefer_wait``) polls ``generation.get_job`` the way the
stream does, from 0.1 s doubling up to ``GENERATION_EVENTS_POLL_SECONDS``, and
holds one of the stream slots below while it waits: with none free it does
not wait (202, no ``Preference-Applied``).

**The event stream** (``GET /v1/generations/{id}/events``) is the gateway
polling ``generation.get_job`` every ``GENERATION_EVENTS_POLL_SECONDS`` and
sending ``event: job`` with the job whenever its status, progress, stage or
queue position changes. The current state is always sent first (so
``Last-Event-ID`` is accepted but never replays missed steps), a ``:
keepalive`` comment keeps idle proxies from closing the connection, and the
stream ends after a final state or after ``GENERATION_EVENTS_MAX_SECONDS``
(the client reconnects). Polling keeps the gateway free of broker consumers
and of state: any replica can serve any stream.

Under gunicorn's gthread workers **each open stream holds a thread** for its
whole life, so a process holds at most ``GENERATION_EVENTS_MAX_STREAMS``
streams at once (``GATEWAY_EVENT_STREAMS``; 503 ``service_unavailable`` with
``Retry-After`` past it) and at most ``GENERATION_EVENTS_PER_USER`` (2) of one
user's (429 ``too_many_streams``), so the rest of the API keeps its threads
and one user cannot take every stream. Both limits count per gateway
process (a gunicorn worker): they are not shared between workers or
replicas. A slot is freed when the stream ends or its client goes away. An
RPC proxy is held only for the length of each poll.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

from flask import Response, current_app, jsonify, request
from flask.views import MethodView
from marshmallow import Schema, fields, validate

from gateway.api.common import (
    IDEMPOTENCY_KEY_DOC,
    Blueprint,
    cached_answer,
    call,
    errors,
    for_caller,
    given,
    idempotency_key,
    present,
    rpc,
)
from gateway.auth import authenticated, current_principal, require_verified
from gateway.readcache import job_lifetime
from gateway.rpc import ServiceUnavailable
from services.common.contracts import generation as c
from services.common.errors import DomainError
from services.common.observability import correlation_id

# what the stream watches: a change in any of these sends an event
WATCHED = ("status", "progress", "stage", "queue_position")

DEFAULT_POLL_SECONDS = 0.5
DEFAULT_KEEPALIVE_SECONDS = 15.0
DEFAULT_MAX_SECONDS = 600.0
DEFAULT_MAX_STREAMS = 4
DEFAULT_STREAMS_PER_USER = 2
RECONNECT_MS = 2000  # the SSE ``retry:`` hint: how soon a client reconnects
STREAMS_EXTENSION = "darkroom_event_streams"

# replaced by tests (a fake clock); the stream reads them at each step
monotonic: Callable[[], float] = time.monotonic
sleep: Callable[[float], None] = time.sleep

generation_blp = Blueprint("generation", __name__, url_prefix="/v1",
                           description="Generation: templates, models, jobs, their progress as "
                                       "server-sent events, cancellation")


class StreamSlots:
    """The event streams this process holds open: at most ``total``, and at
    most ``per_user`` of any one user's."""

    def __init__(self, total: int, per_user: int):
        self.total, self.per_user = max(1, total), max(1, per_user)
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    def open_streams(self, user_id: str | None = None) -> int:
        with self._lock:
            return self._open[user_id] if user_id is not None else sum(self._open.values())

    def acquire(self, user_id: str) -> Callable[[], None]:
        """A slot for one of ``user_id``'s streams, or 429 ``too_many_streams``
        (the user has ``per_user`` open) / 503 ``service_unavailable`` (the
        process has ``total``). Returns the release function (idempotent)."""
        with self._lock:
            if self._open[user_id] >= self.per_user:
                raise too_many_streams(self.per_user)
            if sum(self._open.values()) >= self.total:
                raise ServiceUnavailable("too many open event streams on this gateway; poll "
                                         "the job instead, or retry shortly")
            self._open[user_id] += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                self._open[user_id] -= 1
                if self._open[user_id] <= 0:
                    del self._open[user_id]

        return release


def too_many_streams(per_user: int) -> DomainError:
    return DomainError("too_many_streams",
                       f"at most {per_user} event streams per user are open at once; close one, "
                       "or poll the job instead", 429,
                       {"max_streams_per_user": per_user, "retry_after": 5})


@generation_blp.record_once
def _stream_slots(state) -> None:
    """One set of slots per app: the event streams this process may hold open."""
    config = state.app.extensions["darkroom"].config
    state.app.extensions[STREAMS_EXTENSION] = StreamSlots(
        int(config.get("GENERATION_EVENTS_MAX_STREAMS") or DEFAULT_MAX_STREAMS),
        int(config.get("GENERATION_EVENTS_PER_USER") or DEFAULT_STREAMS_PER_USER))


# ------------------------------------------------------------ schemas of this API


class JsonNumber(fields.Number):
    """A number dumped as it is (an integer bound stays an integer)."""

    num_type = float

    def _format_num(self, value):
        return value


class TemplateField(Schema):
    """One input of a template, as the template file declares it."""

    name = fields.String(required=True)
    type = fields.String(required=True, validate=validate.OneOf(
        ("string", "integer", "number", "enum", "boolean")))
    required = fields.Boolean(required=True)
    description = fields.String()
    enum = fields.List(fields.String(), metadata={"description": "the allowed values (enum)"})
    min = JsonNumber(metadata={"description": "smallest value (integer, number)"})
    max = JsonNumber(metadata={"description": "largest value (integer, number)"})
    min_length = fields.Integer(metadata={"description": "shortest text (string)"})
    max_length = fields.Integer(metadata={"description": "longest text (string)"})
    default = fields.Raw(allow_none=True,
                         metadata={"description": "the value used when the input is left out "
                                                  "(optional inputs only)"})


class Template(Schema):
    id = fields.String(required=True, metadata={"description": "pass it as `template`"})
    name = fields.String(required=True)
    job_type = fields.String(required=True, validate=validate.OneOf(c.JOB_TYPES))
    description = fields.String(required=True)
    storyboard = fields.Boolean(required=True,
                                metadata={"description": "true: the template yields a storyboard "
                                                         "of shots (video)"})
    inputs = fields.List(fields.Nested(TemplateField), required=True,
                         metadata={"description": "what to pass as `inputs`"})


class TemplateList(Schema):
    items = fields.List(fields.Nested(Template), required=True)


class DryRunQuery(Schema):
    dry_run = fields.Boolean(load_default=False,
                             metadata={"description": "quote the price (200 {price, breakdown}) "
                                                      "without creating a job"})


# spelled out: a manual ``parameters`` list replaces the one @arguments generates
DRY_RUN_DOC = {
    "in": "query", "name": "dry_run", "required": False,
    "schema": {"type": "boolean", "default": False},
    "description": "true: answer 200 {price, breakdown} and create nothing",
}
PREFER_DOC = {
    "in": "header", "name": "Prefer", "required": False, "schema": {"type": "string"},
    "description": f"`wait=N` (RFC 7240): answer 200 with the job if it ends (succeeded, "
                   f"failed, rejected or cancelled) within N seconds, else the usual 202. N "
                   f"over {c.WAIT_MAX_S} is taken as {c.WAIT_MAX_S}; other preferences, and a "
                   "`wait` whose value is not a number of seconds, are ignored",
}
WAIT_HEADERS_DOC = {
    "Preference-Applied": {"description": "`wait=N` when the gateway waited for the job "
                                          "(`Prefer: wait=N`)", "schema": {"type": "string"}},
    "Vary": {"description": "`Prefer`", "schema": {"type": "string"}},
}
EVENTS_DOC = {
    "parameters": [{
        "in": "header", "name": "Last-Event-ID", "required": False, "schema": {"type": "string"},
        "description": "accepted on reconnect; the current state is always sent first",
    }],
    "responses": {"200": {
        "description": "`text/event-stream`: `event: job` with the job (as `GET "
                       "/v1/generations/{id}`) on each change of status, progress, stage or "
                       "queue position; `: keepalive` comments; `event: error` with docs/api.md's "
                       "error object if the job becomes unreadable. Ends after a final state or "
                       "GENERATION_EVENTS_MAX_SECONDS (reconnect then).",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }},
}


def _config(name: str, default: float) -> float:
    value = current_app.extensions["darkroom"].config.get(name)
    return float(default if value is None or value == "" else value)


# ------------------------------------------------------------ templates (public)


@generation_blp.route("/templates", methods=["GET"])
@generation_blp.response(200, TemplateList)
def templates():
    """The templates a job can use, with their input fields"""
    return call(TemplateList, "generation.list_templates")


@generation_blp.route("/models", methods=["GET"])
@generation_blp.response(200, c.ModelList)
def models():
    """The models a job can name (`model`): job types, price of a default job, region"""
    return call(c.ModelList, "generation.list_models")


# ------------------------------------------------------------ jobs


@generation_blp.route("/generations")
class Generations(MethodView):
    @generation_blp.response(202, c.JobView, headers={
        "Location": {"description": "/v1/generations/{id}", "schema": {"type": "string"}},
        **WAIT_HEADERS_DOC})
    @generation_blp.alt_response(200, schema={"anyOf": [c.PriceQuote, c.JobView]},
                                 headers=WAIT_HEADERS_DOC,
                                 description="with ?dry_run=true: the price, no job created "
                                             "(PriceQuote); with `Prefer: wait=N`: the job, "
                                             "which ended within N seconds (JobView)")
    @generation_blp.doc(parameters=[DRY_RUN_DOC, IDEMPOTENCY_KEY_DOC, PREFER_DOC])
    @errors(404, 409, 422)
    @require_verified
    @generation_blp.arguments(DryRunQuery, location="query")
    @generation_blp.arguments(c.SubmitJob)
    def post(self, query, payload):
        """Submit a job (text-to-image, image-to-image, image-to-video, or a template)"""
        body = c.SubmitJob().dump(payload)  # JSON types (UUIDs as strings) for the RPC
        answer = for_caller(None, "generation.submit", body, idempotency_key=idempotency_key(),
                            dry_run=query["dry_run"])
        if query["dry_run"]:
            return jsonify(c.PriceQuote().dump(present(c.PriceQuote, answer)))
        headers = {"Location": f"/v1/generations/{answer['id']}", "Vary": "Prefer"}
        wait = c.prefer_wait(request.headers.getlist("Prefer"))
        if wait is not None:
            answer, applied = awaited(answer, wait)
            if applied:
                headers["Preference-Applied"] = f"wait={wait}"
                if answer.get("status") in c.FINAL:
                    return jsonify(c.JobView().dump(present(c.JobView, answer))), 200, headers
        return present(c.JobView, answer), 202, headers

    @generation_blp.arguments(c.JobQuery, location="query")
    @generation_blp.response(200, c.JobPage)
    @authenticated
    def get(self, query):
        """The caller's jobs, newest first (filter by status)"""
        return for_caller(c.JobPage, "generation.list_jobs", given(query))


@generation_blp.route("/generations/<uuid:job_id>")
class Generation(MethodView):
    @generation_blp.response(200, c.JobView)
    @authenticated
    def get(self, job_id):
        """One of the caller's jobs"""
        user_id, job = current_principal().user_id, str(job_id)
        return cached_answer(c.JobView, "job", user_id, job,
                             lambda: call(None, "generation.get_job", user_id, job), job_lifetime)

    @generation_blp.response(202, c.JobView)
    @errors(409)
    @authenticated
    def delete(self, job_id):
        """Cancel a job that has not started (409 not_cancellable once it runs)"""
        return for_caller(c.JobView, "generation.cancel_job", str(job_id))


@generation_blp.route("/generations/<uuid:job_id>/webhook-deliveries", methods=["GET"])
@generation_blp.arguments(c.WebhookDeliveryQuery, location="query")
@generation_blp.response(200, c.WebhookDeliveryPage)
@authenticated
def webhook_deliveries(query, job_id):
    """The webhook deliveries of one of the caller's jobs, newest first"""
    return for_caller(c.WebhookDeliveryPage, "generation.list_webhook_deliveries", str(job_id),
                      given(query))


@generation_blp.route("/generations/<uuid:job_id>/events", methods=["GET"])
@generation_blp.doc(**EVENTS_DOC)
@generation_blp.alt_response(429, description="too_many_streams: the caller has "
                             "GENERATION_EVENTS_PER_USER streams open on this gateway process")
@authenticated
def job_events(job_id):
    """The job's status and progress as server-sent events"""
    user_id, job = current_principal().user_id, str(job_id)
    with rpc() as proxy:  # 404 (another user's job), 503... as plain HTTP errors
        first = proxy.generation.get_job(user_id, job)
    release = current_app.extensions[STREAMS_EXTENSION].acquire(user_id)  # 429 / 503
    try:
        stream = event_stream(
            first, job_fetcher(user_id, job),
            poll=_config("GENERATION_EVENTS_POLL_SECONDS", DEFAULT_POLL_SECONDS),
            keepalive=_config("GENERATION_EVENTS_KEEPALIVE_SECONDS", DEFAULT_KEEPALIVE_SECONDS),
            max_seconds=_config("GENERATION_EVENTS_MAX_SECONDS", DEFAULT_MAX_SECONDS),
        )
        response = Response(stream, status=200, mimetype="text/event-stream")
        response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        # released when the server closes the response: finished, client gone, or never iterated
        response.call_on_close(release)
    except BaseException:
        release()
        raise
    return response


# ------------------------------------------------------------ waiting for a job (Prefer: wait)


def awaited(job: dict, seconds: int) -> tuple[dict, bool]:
    """``(job, True)``: the job once it ends, or as it is after ``seconds``;
    ``(job, False)``: not waited for, because this process holds all its event
    streams or the caller all of theirs (a wait takes a stream's slot, so
    waits and streams together keep within the same threads)."""
    if job.get("status") in c.FINAL or seconds <= 0:
        return job, True
    user_id = current_principal().user_id
    try:
        release = current_app.extensions[STREAMS_EXTENSION].acquire(user_id)
    except DomainError:  # 429 too_many_streams / 503: the preference is not applied
        return job, False
    try:
        return wait_until_final(job, job_fetcher(user_id, job["id"]), seconds, poll=_config(
            "GENERATION_EVENTS_POLL_SECONDS", DEFAULT_POLL_SECONDS)), True
    finally:
        release()


def job_fetcher(user_id: str, job_id: str) -> Callable[[], dict]:
    """``generation.get_job`` of the user's job, callable after the request's
    own code has returned (a stream): with the request's correlation id, and
    a pooled proxy held only for the length of each call."""
    pool, cid = current_app.extensions["darkroom"].rpc, correlation_id.get()

    def fetch() -> dict:
        with pool.get(correlation=cid) as proxy:
            return proxy.generation.get_job(user_id, job_id)

    return fetch


WAIT_FIRST_POLL_SECONDS = 0.1  # then twice as long each time, up to the stream's poll interval


def wait_until_final(job: dict, fetch: Callable[[], dict], seconds: float, *,
                     poll: float) -> dict:
    """Poll ``fetch`` (the job) with a doubling interval, from
    ``WAIT_FIRST_POLL_SECONDS`` up to ``poll``, until the job is in a final
    state or ``seconds`` have passed; the job as last read. A 503 from a poll
    is skipped; any other refusal ends the wait with the job as it was."""
    deadline = monotonic() + seconds
    delay = min(WAIT_FIRST_POLL_SECONDS, poll)
    while job.get("status") not in c.FINAL:
        left = deadline - monotonic()
        if left <= 0:
            break
        sleep(min(delay, left))
        delay = min(delay * 2, max(poll, WAIT_FIRST_POLL_SECONDS))
        try:
            job = fetch()
        except DomainError as exc:
            if exc.status != 503:
                break
    return job


# ------------------------------------------------------------ the stream itself


def event_id(job: dict) -> str:
    """A short id of the watched state (the SSE ``id:`` line)."""
    state = json.dumps([job.get(k) for k in ("attempt", *WATCHED)], default=str)
    return hashlib.sha256(state.encode()).hexdigest()[:16]


def frame(event: str, data: dict, ident: str | None = None) -> str:
    lines = [f"event: {event}"]
    if ident:
        lines.append(f"id: {ident}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return "\n".join(lines) + "\n\n"


def job_frame(job: dict) -> str:
    return frame("job", c.JobView().dump(present(c.JobView, job)), event_id(job))


def event_stream(first: dict, fetch: Callable[[], dict], *, poll: float, keepalive: float,
                 max_seconds: float) -> Iterator[str]:
    """Events for one job: its state now, then each change until it ends.

    A 503 from a poll (the service or broker briefly away) is skipped and
    the next poll tried; any other refusal (the job is gone) ends the stream
    with ``event: error``."""
    started = last_write = monotonic()
    yield f"retry: {RECONNECT_MS}\n\n"
    job, watched = first, None
    while True:
        if job is not None and tuple(job.get(k) for k in WATCHED) != watched:
            watched = tuple(job.get(k) for k in WATCHED)
            yield job_frame(job)
            last_write = monotonic()
            if job.get("status") in c.FINAL:
                return
        now = monotonic()
        if now - started >= max_seconds:
            yield ": stream time is up; reconnect for more\n\n"
            return
        if now - last_write >= keepalive:
            yield ": keepalive\n\n"
            last_write = now
        sleep(max(0.0, min(poll, max_seconds - (now - started))))
        try:
            job = fetch()
        except DomainError as exc:
            if exc.status == 503:
                job = None  # nothing new this time; keep the stream
                continue
            yield frame("error", {"error": exc.to_dict()})
            return
