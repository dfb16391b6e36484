"""Generation service contracts: the saga's job events (docs/design.md §4) and
the RPC payloads the gateway and the ops CLI send.

``attempt`` numbers the runs of one job: a replayed job (``darkroom-ops jobs
replay``) is attempt 2, 3, ... and billing holds and captures each attempt on
its own ledger keys.
"""

from __future__ import annotations

import re
from enum import StrEnum

from marshmallow import ValidationError, fields, validate, validates_schema

from services.common.contracts.base import (
    EventSchema,
    PageQuery,
    RpcSchema,
    page_of,
    register_event,
)
from services.common.contracts.storage import OutputUrl

JOB_TYPES = ("text-to-image", "image-to-image", "image-to-video")
# The disclosure log (services/generation/disclosures.py): what a request sent
# to a model vendor carried, and how it went.
DISCLOSURE_CATEGORIES = ("prompt", "negative_prompt", "source_image", "parameters")
DISCLOSURE_OUTCOMES = ("succeeded", "failed", "refused")


# ---------------------------------------------------------------- job rules
#
# The one home of what a job may ask for and what it gets when it asks for
# nothing. The gateway validates requests with SubmitJob, generation fills the
# defaults in before it asks billing for the price, billing's Quote takes the
# same limits (and billing refuses to start when its configured default size
# or duration differs from these), the providers render with them and
# docs/generation.md quotes them.

DEFAULT_N = 1
N_MAX = 4  # images per job; a video job makes one
# Image sizes: "WxH", each side a multiple of SIZE_STEP within [SIZE_MIN, SIZE_MAX].
SIZE_MIN = 512
SIZE_MAX = 1536
SIZE_STEP = 64
DEFAULT_SIZE = "1024x1024"
DEFAULT_VIDEO_DURATION_S = 4  # a video without duration_s (or a template) is this long
DURATION_MAX_S = 60
_SIZE_RE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")  # fullmatch: ASCII digits, no newline
_SIDE = "(?:" + "|".join(str(side) for side in range(SIZE_MIN, SIZE_MAX + 1, SIZE_STEP)) + ")"
SIZE_PATTERN = f"^{_SIDE}x{_SIDE}$"  # what parse_size accepts, for the OpenAPI document


def parse_size(value: str) -> tuple[int, int]:
    """``"768x1024"`` → ``(768, 1024)``; ValidationError for anything else."""
    match = _SIZE_RE.fullmatch(value or "")
    if not match:
        raise ValidationError("must be WIDTHxHEIGHT, e.g. 1024x1024")
    width, height = int(match.group(1)), int(match.group(2))
    for side in (width, height):
        if not SIZE_MIN <= side <= SIZE_MAX or side % SIZE_STEP:
            raise ValidationError(
                f"each side must be a multiple of {SIZE_STEP} from {SIZE_MIN} to {SIZE_MAX}"
            )
    return width, height


def validate_size(value: str) -> None:
    """A marshmallow validator: :func:`parse_size` without its answer."""
    parse_size(value)


class JobState(StrEnum):
    """A job's ``status``: ``queued`` (waiting for its credits) → ``reserved``
    (credits held, waiting for a worker) → ``running`` → ``succeeded`` or
    ``failed``; or ``rejected`` (no credits) or ``cancelled`` before it ran."""

    QUEUED = "queued"
    RESERVED = "reserved"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


ACTIVE = frozenset({JobState.QUEUED, JobState.RESERVED, JobState.RUNNING})  # count to the cap
FINAL = frozenset(JobState) - ACTIVE  # never change again (a failed job may be replayed)
_STATES = [state.value for state in JobState]  # plain strings, for schemas and the OpenAPI

# A job's webhook events (``webhook_events``; all when absent): each is sent
# once per attempt, when the job enters the state below, as a POST whose
# ``type`` is ``job.<event>``. A job rejected at submit sends none.
WEBHOOK_EVENTS = ("started", "completed", "failed", "cancelled")
WEBHOOK_EVENT_OF_STATE = {JobState.RUNNING: "started", JobState.SUCCEEDED: "completed",
                          JobState.FAILED: "failed", JobState.CANCELLED: "cancelled"}
WEBHOOK_DELIVERY_STATUSES = ("pending", "delivered", "failed")

_snake = validate.Regexp(r"^[a-z][a-z0-9_]*$", error="must be a snake_case code")


def Attempt(**kw):
    return fields.Integer(load_default=1, validate=validate.Range(min=1), **kw)


class JobEvent(EventSchema):
    """Base of the saga's events about one attempt of a user's job."""

    job_id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)
    attempt = Attempt()


@register_event("generation.job_requested")
class JobRequested(JobEvent):
    """A job exists and waits for its credits: billing holds ``price``."""

    type = fields.String(required=True, validate=validate.OneOf(JOB_TYPES))
    price = fields.Integer(
        required=True, validate=validate.Range(min=0),
        metadata={"description": "credits quoted by billing.quote when the job was submitted"},
    )


@register_event("generation.job_succeeded")
class JobSucceeded(JobEvent):
    output_ids = fields.List(fields.UUID(), required=True)


@register_event("generation.job_failed")
class JobFailed(JobEvent):
    reason = fields.String(required=True, validate=[validate.Length(max=100), _snake])
    message = fields.String(load_default="", validate=validate.Length(max=2000))


@register_event("generation.job_cancelled")
class JobCancelled(JobEvent):
    """The user cancelled the job (billing releases its hold)."""


@register_event("generation.job_requeued")
class JobRequeued(EventSchema):
    """Internal: a job whose worker stopped is runnable again."""

    job_id = fields.UUID(required=True)


# ---------------------------------------------------------------- requests

PROMPT_MAX = 4000
MODEL_MAX = 40  # a provider entry's name (providers file)
# A provider's name in the providers file, which a job names as its ``model``.
MODEL_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"
SEED_MAX = 2**32 - 1


# An absolute http(s) URL of printable ASCII: a host name (labels of letters,
# digits and inner hyphens), an IPv4 address or a bracketed IPv6 one, an optional
# port, then a path, query or fragment. The same pattern validates requests and
# is in the OpenAPI document, so the two agree exactly.
WEBHOOK_URL_PATTERN = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
    r"|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?::[0-9]{1,5})?(?:[/?#][\x21-\x7e]*)?$"
)
WEBHOOK_URL_MAX = 2000
_WEBHOOK_URL = re.compile(WEBHOOK_URL_PATTERN)


def _webhook_url(value: str) -> None:
    if not _WEBHOOK_URL.fullmatch(value):  # fullmatch: no trailing newline before "$"
        raise ValidationError("Not a valid http(s) URL.")


def _given(name: str, json_type: str) -> dict:
    """JSON schema: ``name`` is present and not null."""
    return {"required": [name], "properties": {name: {"type": json_type}}}


def _type_is(*types: str) -> dict:
    return {"properties": {"type": {"enum": list(types)}}}


class SubmitJob(RpcSchema):
    """``POST /v1/generations``: a prompt, or a template and its inputs."""

    @staticmethod
    def OPENAPI_EXTRA() -> dict:  # noqa: N802 - read by gateway.api.common.SchemaExtras
        """_coherent's rules and parse_size's sizes, for the OpenAPI document."""
        return {"allOf": [
            {"properties": {"size": {"pattern": SIZE_PATTERN}}},
            {"anyOf": [_type_is("image-to-video"), _given("prompt", "string"),
                       _given("template", "string")]},
            {"not": {"allOf": [_given("prompt", "string"), _given("template", "string")]}},
            {"anyOf": [{"not": _given("inputs", "object")}, _given("template", "string")]},
            {"anyOf": [{"allOf": [_type_is("image-to-image", "image-to-video"),
                                  _given("source_image_id", "string")]},
                       {"allOf": [_type_is("text-to-image"),
                                  {"not": _given("source_image_id", "string")}]}]},
            {"anyOf": [_type_is("image-to-video"), {"not": _given("duration_s", "integer")}]},
            {"anyOf": [{"not": _type_is("image-to-video")},
                       {"properties": {"n": {"enum": [1]}}}]},
            {"anyOf": [{"not": _given("webhook_events", "array")},
                       _given("webhook_url", "string")]},
        ]}

    type = fields.String(required=True, validate=validate.OneOf(JOB_TYPES))
    prompt = fields.String(load_default=None, validate=validate.Length(min=1, max=PROMPT_MAX))
    negative_prompt = fields.String(load_default=None, validate=validate.Length(max=PROMPT_MAX))
    n = fields.Integer(load_default=DEFAULT_N, validate=validate.Range(min=1, max=N_MAX))
    size = fields.String(load_default=DEFAULT_SIZE, validate=validate_size, metadata={
        "description": f"WIDTHxHEIGHT, sides multiples of {SIZE_STEP}, {SIZE_MIN}–{SIZE_MAX}"})
    seed = fields.Integer(load_default=None, allow_none=True,
                          validate=validate.Range(min=0, max=SEED_MAX))
    source_image_id = fields.UUID(load_default=None, allow_none=True)
    strength = fields.Float(load_default=0.6, validate=validate.Range(min=0.0, max=1.0))
    template = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    inputs = fields.Dict(keys=fields.String(validate=validate.Length(max=64)),
                         load_default=None, allow_none=True)
    duration_s = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1, max=DURATION_MAX_S),
        metadata={"description": f"image-to-video only; {DEFAULT_VIDEO_DURATION_S} when absent "
                                 "(a template's storyboard sets its own)"})
    webhook_url = fields.String(
        load_default=None, allow_none=True,
        validate=[validate.Length(max=WEBHOOK_URL_MAX), _webhook_url],
        metadata={"pattern": WEBHOOK_URL_PATTERN,
                  "description": "an absolute http(s) URL, called on the job's "
                                 "`webhook_events`; its host must resolve to addresses the "
                                 "service may call"})
    webhook_events = fields.List(
        fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)), load_default=None,
        allow_none=True, validate=validate.Length(min=1, max=len(WEBHOOK_EVENTS)),
        metadata={"description": "the events `webhook_url` is called on; all when absent. "
                                 "An unknown event is 400 invalid_request with "
                                 "`details.fields.webhook_events`"})
    model = fields.String(
        load_default=None, allow_none=True,
        validate=[validate.Length(min=1, max=MODEL_MAX),
                  validate.Regexp(MODEL_NAME_PATTERN, error="not a model name")],
        metadata={"pattern": MODEL_NAME_PATTERN,
                  "description": "a model of `GET /v1/models` that can run this job type: only "
                                 "it runs the job (no failover); 400 unknown_model otherwise. "
                                 "Without it the job type's route applies"})

    @validates_schema
    def _coherent(self, data, **kwargs):
        errors: dict[str, list[str]] = {}
        if not data.get("prompt") and not data.get("template") and data["type"] != "image-to-video":
            errors["prompt"] = ["A prompt or a template is required."]
        if data.get("template") and data.get("prompt"):
            errors["template"] = ["Give a prompt or a template, not both."]
        if data.get("inputs") is not None and not data.get("template"):
            errors["inputs"] = ["Inputs belong to a template."]
        needs_source = data["type"] in ("image-to-image", "image-to-video")
        if needs_source and not data.get("source_image_id"):
            errors["source_image_id"] = [f"{data['type']} needs a source image."]
        if not needs_source and data.get("source_image_id"):
            errors["source_image_id"] = ["Only image-to-image and image-to-video take a source."]
        if data["type"] != "image-to-video" and data.get("duration_s") is not None:
            errors["duration_s"] = ["Only image-to-video takes a duration."]
        if data["type"] == "image-to-video" and data.get("n", DEFAULT_N) != 1:
            errors["n"] = ["image-to-video makes one video."]
        if data.get("webhook_events") is not None and not data.get("webhook_url"):
            errors["webhook_events"] = ["Events belong to a webhook_url."]
        if errors:
            raise ValidationError(errors)


# ``Prefer: wait=N`` (RFC 7240) on ``POST /v1/generations``: answer the job
# once it ends if that is within N seconds. The one home of the rule; the
# gateway only relays it.
WAIT_MAX_S = 60  # a larger wait is taken as this one
_PREFERENCE = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")+')  # commas outside quoted strings


def prefer_wait(values: list[str]) -> int | None:
    """The seconds asked by RFC 7240's ``wait`` preference in the ``Prefer``
    header values ``values``, at most :data:`WAIT_MAX_S`; None when no
    ``wait`` is asked or its value is not delta-seconds (digits), which is
    ignored as RFC 7240 has a server ignore a preference it cannot use. Only
    the first ``wait`` counts (RFC 7240 §2); names are case-insensitive and
    the value may be a quoted string; parameters after ``;`` are ignored."""
    for value in values:
        for match in _PREFERENCE.finditer(value or ""):
            name, equals, word = match.group().split(";", 1)[0].partition("=")
            if name.strip().lower() != "wait":
                continue
            word = word.strip()
            if len(word) >= 2 and word[0] == word[-1] == '"':
                word = word[1:-1]
            if not equals or not word or not (word.isascii() and word.isdigit()):
                return None
            return WAIT_MAX_S if len(word) > 6 else min(int(word), WAIT_MAX_S)
    return None


class JobQuery(PageQuery):
    """``GET /v1/generations?status=&limit=&cursor=``"""

    status = fields.String(load_default=None, validate=validate.OneOf(_STATES))


class FindJobs(RpcSchema):
    """Operators: ``darkroom-ops jobs list``."""

    status = fields.String(load_default=None, validate=validate.OneOf(_STATES))
    since = fields.AwareDateTime(load_default=None)
    reason = fields.String(load_default=None, validate=validate.Length(max=100))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=10000))
    order = fields.String(load_default="oldest", validate=validate.OneOf(("oldest", "newest")),
                          metadata={"description": "by last change: oldest or newest first"})


# ---------------------------------------------------------------- answers


class JobError(RpcSchema):
    code = fields.String(required=True)
    message = fields.String(required=True)


class Shot(RpcSchema):
    prompt = fields.String(allow_none=True)
    camera = fields.String(required=True)
    duration_s = fields.Float(required=True)


class JobView(RpcSchema):
    id = fields.UUID(required=True)
    type = fields.String(required=True, validate=validate.OneOf(JOB_TYPES))
    status = fields.String(required=True, validate=validate.OneOf(_STATES))
    attempt = fields.Integer(required=True)
    progress = fields.Float(required=True)
    stage = fields.String(required=True)
    queue_position = fields.Integer(allow_none=True)
    price = fields.Integer(required=True)
    outputs = fields.List(fields.UUID(), required=True, metadata={"description": "image ids"})
    output_urls = fields.List(fields.Nested(OutputUrl), metadata={
        "description": "a succeeded job's outputs that are still in the gallery, each with a "
                       "signed, short-lived download URL (`[]` for any other job)"})
    error = fields.Nested(JobError, allow_none=True)
    prompt = fields.String(allow_none=True)
    negative_prompt = fields.String(allow_none=True)
    prompt_redacted = fields.Boolean(required=True)
    params = fields.Dict(required=True)
    shots = fields.List(fields.Nested(Shot), allow_none=True)
    webhook_url = fields.String(allow_none=True)
    webhook_events = fields.List(fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)),
                                 allow_none=True, metadata={
                                     "description": "null: every event (WEBHOOK_EVENTS)"})
    provider = fields.String(allow_none=True)
    model = fields.String(allow_none=True, metadata={
        "description": "the model the job asked for (`model`); null: its type's route"})
    created_at = fields.AwareDateTime(required=True)
    started_at = fields.AwareDateTime(allow_none=True)
    finished_at = fields.AwareDateTime(allow_none=True)


class OpsJobView(JobView):
    user_id = fields.UUID(required=True)


JobPage = page_of(JobView, "JobPage")


class DisclosureQuery(PageQuery):
    """``GET /v1/privacy/disclosures?limit=&cursor=``"""


class DisclosureView(RpcSchema):
    """One request sent to a model vendor (services/generation/disclosures.py)."""

    id = fields.UUID(required=True)
    job_id = fields.UUID(required=True)
    attempt = fields.Integer(required=True, metadata={"description": "the job's attempt"})
    provider = fields.String(required=True, metadata={
        "description": "the vendor: the provider's name in the operator's configuration"})
    region = fields.String(allow_none=True, metadata={
        "description": "where the vendor processes data (cn, us, eu, ...), if configured"})
    categories = fields.List(fields.String(validate=validate.OneOf(DISCLOSURE_CATEGORIES)),
                             required=True, metadata={"description": "the data sent"})
    outcome = fields.String(required=True, validate=validate.OneOf(DISCLOSURE_OUTCOMES))
    error_code = fields.String(allow_none=True, metadata={
        "description": "why a failed or refused request failed"})
    created_at = fields.AwareDateTime(required=True, metadata={"description": "when it was sent"})


DisclosurePage = page_of(DisclosureView, "DisclosurePage")


class WebhookDeliveryQuery(PageQuery):
    """``GET /v1/generations/{id}/webhook-deliveries?limit=&cursor=``"""


class WebhookDeliveryView(RpcSchema):
    """One webhook delivery of a job (services/generation/deliveries.py):
    its ``id`` is the ``webhook-id`` header, the same on every attempt."""

    id = fields.UUID(required=True)
    job_id = fields.UUID(required=True)
    job_attempt = fields.Integer(required=True, metadata={"description": "the job's attempt"})
    event = fields.String(required=True, validate=validate.OneOf(WEBHOOK_EVENTS))
    url = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(WEBHOOK_DELIVERY_STATUSES))
    attempts = fields.Integer(required=True, metadata={"description": "POSTs made so far"})
    response_status = fields.Integer(allow_none=True, metadata={
        "description": "the HTTP status of the last answer; null: none yet, or no answer"})
    last_error = fields.String(allow_none=True)
    created_at = fields.AwareDateTime(required=True)
    last_attempt_at = fields.AwareDateTime(allow_none=True)
    next_attempt_at = fields.AwareDateTime(allow_none=True, metadata={
        "description": "when a pending delivery is tried next; null once it ended"})
    delivered_at = fields.AwareDateTime(allow_none=True)


class OpsWebhookDeliveryView(WebhookDeliveryView):
    user_id = fields.UUID(required=True)


WebhookDeliveryPage = page_of(WebhookDeliveryView, "WebhookDeliveryPage")


class FindWebhookDeliveries(RpcSchema):
    """Operators: ``darkroom-ops webhooks list``."""

    job_id = fields.UUID(load_default=None)
    user_id = fields.UUID(load_default=None)
    status = fields.String(load_default=None,
                           validate=validate.OneOf(WEBHOOK_DELIVERY_STATUSES))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=10000))


class PriceQuote(RpcSchema):
    price = fields.Integer(required=True)
    breakdown = fields.Dict(required=True)


class ModelPrice(RpcSchema):
    job_type = fields.String(required=True, validate=validate.OneOf(JOB_TYPES))
    price = fields.Integer(required=True, metadata={
        "description": "credits for one job of this type with the defaults (one "
                       f"{DEFAULT_SIZE} image, or a {DEFAULT_VIDEO_DURATION_S} s video)"})
    breakdown = fields.Dict(required=True, metadata={
        "description": "billing's breakdown of that price: its rule for this model"})


class Model(RpcSchema):
    """``GET /v1/models``: one entry of the operator's providers file that a route uses."""

    name = fields.String(required=True, metadata={"description": "pass it as `model`"})
    job_types = fields.List(fields.String(validate=validate.OneOf(JOB_TYPES)), required=True)
    region = fields.String(allow_none=True, metadata={
        "description": "where the vendor processes the data (cn, us, eu, on-premises, ...); "
                       "null: not stated"})
    prices = fields.List(fields.Nested(ModelPrice), required=True)


class ModelList(RpcSchema):
    items = fields.List(fields.Nested(Model), required=True)


# ---------------------------------------------------------------- webhooks
#
# What a job's webhook POSTs (services/generation/jobs.py builds it): described
# in the OpenAPI document's ``webhooks``; a test checks the builder against it.

WEBHOOK_TYPES = tuple(f"job.{event}" for event in WEBHOOK_EVENTS)


class WebhookJob(RpcSchema):
    """The job in a webhook: its state when the event happened, never its prompt."""

    id = fields.UUID(required=True)
    type = fields.String(required=True, validate=validate.OneOf(JOB_TYPES))
    status = fields.String(required=True, validate=validate.OneOf(_STATES))
    attempt = fields.Integer(required=True)
    outputs = fields.List(fields.UUID(), required=True, metadata={"description": "image ids"})
    price = fields.Integer(required=True)
    error = fields.Nested(JobError, required=True, allow_none=True)
    created_at = fields.AwareDateTime(required=True)
    finished_at = fields.AwareDateTime(required=True, allow_none=True)


class JobWebhook(RpcSchema):
    """The body of a job's webhook."""

    type = fields.String(required=True, validate=validate.OneOf(WEBHOOK_TYPES),
                         metadata={"description": "`job.` and the event (WEBHOOK_EVENTS)"})
    job = fields.Nested(WebhookJob, required=True)
