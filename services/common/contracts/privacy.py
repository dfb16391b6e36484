"""Privacy contracts: data-subject requests orchestrated by events, consent,
policy versions, the retention schedule and the gateway's access-log facts.

The privacy service publishes ``privacy.export_requested`` and
``privacy.erasure_requested``; every service that holds personal data
(:data:`PARTICIPANTS`) answers with ``<service>.export_part_ready`` or
``<service>.erasure_completed`` (registered below for each of them; how a
service takes part is :mod:`services.common.privacy_parts`). Those
answers carry the part (its JSON, or the id of an object stored through the
storage service when it is big) and, for an erasure, counts and times only:
never personal data, since they end up in the erasure certificate.

The gateway uses the request and response schemas for the HTTP API of
docs/api.md "Privacy"; ``gateway.requests_logged`` carries the gateway's access-log
facts, up to :data:`ACCESS_LOG_BATCH_MAX` of them per event (the gateway has
no service of its own, so its contract lives here, with its consumer).
"""

from __future__ import annotations

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from services.common.contracts.auth import PASSWORD_MAX
from services.common.contracts.base import (
    EventSchema,
    PageQuery,
    RpcSchema,
    Sealed,
    page_of,
    register_event,
)

# Every service that holds personal data and takes part in export and erasure
# requests: the one list of them (the privacy service asks these, registers
# their answers and gathers their retention schedules from it).
PART_SERVICES = ("auth", "billing", "generation", "notifications", "storage", "privacy")
# Those that answer by event (and the privacy service records its own part directly).
PARTICIPANTS = tuple(s for s in PART_SERVICES if s != "privacy")
REQUEST_TYPES = ("export", "erasure", "restriction", "lift_restriction")
STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
OPEN_STATUSES = ("pending", "in_progress", "failed")
# waiting: a later phase, not asked yet; pending: asked, no answer yet.
PART_STATUSES = ("waiting", "pending", "completed", "failed")
# preferences: the cookie policy's "Preferences" category (theme, language, prompt drafts)
CONSENT_PURPOSES = ("marketing_email", "analytics", "preferences")
# Regions a user refuses processing in (``refused_regions``): names as the
# operator gives providers' ``region`` (cn, us, eu, on-premises, ...).
REGION = validate.Regexp(r"^[a-z0-9][a-z0-9._-]{0,31}$",
                         error="a region: 1 to 32 lowercase letters, digits, '.', '_' or '-'")
REFUSED_REGIONS_MAX = 20
# A part whose JSON is larger than this travels as a stored object, not in the event.
PART_INLINE_MAX_BYTES = 1_000_000
POLICY_VERSION = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$",
                                 error="1 to 32 letters, digits, '.', '_' or '-'")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# The most access-log facts one gateway.requests_logged event carries (a gateway
# worker under load fills one in half a second; each event costs a publish and a
# privacy transaction, so fewer, larger ones cost less: docs/scaling.md).
ACCESS_LOG_BATCH_MAX = 500


# ---------------------------------------------------------------- events


class RequestEvent(EventSchema):
    """Base of the events about one data-subject request of a user."""

    request_id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)


@register_event("privacy.export_requested")
class ExportRequested(RequestEvent):
    """Each service in ``services`` exports what it holds about ``user_id``."""

    services = fields.List(fields.String(validate=validate.OneOf(PART_SERVICES)), required=True)


@register_event("privacy.erasure_requested")
class ErasureRequested(RequestEvent):
    """Each service in ``services`` deletes (or pseudonymises) what it holds.
    ``recheck``: generation asked once more after every other part, so a job
    submitted while the erasure ran is erased too (and its refusal record of
    the user is dropped: the account is gone by then)."""

    services = fields.List(fields.String(validate=validate.OneOf(PART_SERVICES)), required=True)
    recheck = fields.Boolean(load_default=False)


@register_event("privacy.erasure_scheduled")
class ErasureScheduled(RequestEvent):
    """An erasure was asked for and waits out its grace period: generation
    refuses new jobs and billing refuses holds of ``user_id`` until it is
    cancelled (or done); notifications mails the owner the cancel link (the
    token, single use, valid until ``starts_at``, travels sealed under
    ``MAIL_SECRETS_KEY``: only notifications opens it)."""

    starts_at = fields.AwareDateTime(required=True)
    sealed_cancel_token = Sealed(required=True,
                                 metadata={"description": "the cancel token, sealed"})


@register_event("privacy.erasure_cancelled")
class ErasureCancelled(RequestEvent):
    """The owner cancelled the erasure in its grace period: jobs and spending
    are allowed again."""


@register_event("privacy.export_ready")
class ExportReady(RequestEvent):
    """The archive is stored; notifications mails the owner."""

    expires_at = fields.AwareDateTime(allow_none=True, load_default=None)


@register_event("privacy.restriction_changed")
class RestrictionChanged(EventSchema):
    """While ``restricted``, no new generation runs and no marketing or
    analytics use is made of the account (its data is kept)."""

    user_id = fields.UUID(required=True)
    restricted = fields.Boolean(required=True)


@register_event("privacy.policy_published")
class PolicyPublished(EventSchema):
    """A new privacy policy version: every account's policy status may change
    (a material one asks everyone to accept it), so the gateway's read cache
    drops every ``GET /v1/me`` it holds (``version`` is the envelope's)."""

    policy_version = fields.String(required=True)
    material = fields.Boolean(required=True)


@register_event("privacy.consent_changed")
class ConsentChanged(EventSchema):
    """The user's consents after a change (notifications keeps marketing_email)."""

    user_id = fields.UUID(required=True)
    marketing_email = fields.Boolean(required=True)
    analytics = fields.Boolean(required=True)
    policy_version = fields.String(allow_none=True, load_default=None)
    # the regions the user refuses processing in (generation's routes skip
    # them); None: an event from before there were any (changes nothing)
    refused_regions = fields.List(fields.String(validate=REGION), allow_none=True,
                                  load_default=None)


class AccessFact(Schema):
    """One HTTP request: no body, no query string, no credential, and the
    client's network (IPv4 /24, IPv6 /48) rather than its address. ``id`` is
    made with the fact and is the stored row's id, so a fact delivered twice
    is stored once."""

    class Meta:
        unknown = EXCLUDE  # like the envelope: consumers ignore what they do not know

    id = fields.UUID(required=True)
    user_id = fields.UUID(allow_none=True, load_default=None)
    method = fields.String(required=True, validate=validate.Length(max=10))
    route = fields.String(required=True, validate=validate.Length(max=200))
    status = fields.Integer(required=True, validate=validate.Range(min=100, max=599))
    network = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=64))
    at = fields.AwareDateTime(required=True)


@register_event("gateway.requests_logged")
class RequestsLogged(EventSchema):
    """The access-log facts a gateway process collected within half a
    second: one at least, :data:`ACCESS_LOG_BATCH_MAX` at most."""

    entries = fields.List(fields.Nested(AccessFact), required=True,
                          validate=validate.Length(min=1, max=ACCESS_LOG_BATCH_MAX))


class Withheld(Schema):
    """Something a service holds but leaves out of the export, and why."""

    what = fields.String(required=True)
    why = fields.String(required=True)


class ExportPartReady(EventSchema):
    """A service's part of an export: ``data`` (its JSON) or, past
    :data:`PART_INLINE_MAX_BYTES`, ``object_id``: a zip holding ``part.json``,
    stored through the storage service as one of the user's ``export`` objects."""

    request_id = fields.UUID(required=True)
    service = fields.String(required=True, validate=validate.OneOf(PART_SERVICES))
    data = fields.Dict(keys=fields.String(), allow_none=True, load_default=None)
    object_id = fields.UUID(allow_none=True, load_default=None)
    about = fields.String(required=True, validate=validate.Length(max=4000))
    withheld = fields.List(fields.Nested(Withheld), load_default=list)

    @validates_schema
    def one_of_data_or_object(self, data, **kwargs):
        if (data.get("data") is None) == (data.get("object_id") is None):
            raise ValidationError("give exactly one of data and object_id")


class ErasureCompleted(EventSchema):
    """What a service removed: counts per table (table names, no personal
    data) and the time it worked. Rows a law makes it keep are
    pseudonymised and counted apart."""

    request_id = fields.UUID(required=True)
    service = fields.String(required=True, validate=validate.OneOf(PART_SERVICES))
    rows_deleted = fields.Integer(required=True, validate=validate.Range(min=0))
    rows_pseudonymised = fields.Integer(load_default=0, validate=validate.Range(min=0))
    objects_deleted = fields.Integer(load_default=0, validate=validate.Range(min=0))
    bytes_deleted = fields.Integer(load_default=0, validate=validate.Range(min=0))
    tables = fields.Dict(keys=fields.String(), values=fields.Integer(), load_default=dict)
    started_at = fields.AwareDateTime(required=True)
    finished_at = fields.AwareDateTime(required=True)
    # the answer to the second asking of an erasure (generation's recheck)
    recheck = fields.Boolean(load_default=False)


# One event name per answering service.
for _service in PARTICIPANTS:
    _title = _service.title()
    register_event(f"{_service}.export_part_ready")(
        type(f"{_title}ExportPartReady", (ExportPartReady,), {"__module__": __name__}))
    register_event(f"{_service}.erasure_completed")(
        type(f"{_title}ErasureCompleted", (ErasureCompleted,), {"__module__": __name__}))
del _service, _title


# ---------------------------------------------------------------- requests


class CreateRequest(RpcSchema):
    """``POST /v1/privacy/requests``. An erasure must be asked with a session
    (not an API key) and carry the account's ``password``, and a
    ``totp_code`` when two-factor sign-in is on: a fresh re-authentication."""

    type = fields.String(required=True, validate=validate.OneOf(REQUEST_TYPES))
    password = fields.String(load_only=True, validate=validate.Length(min=1, max=PASSWORD_MAX),
                             metadata={"description": "an erasure: the account's password"})
    totp_code = fields.String(load_only=True, validate=validate.Regexp(r"^[0-9]{6}$"),
                              metadata={"description": "an erasure: the current TOTP code, "
                                                       "when two-factor sign-in is on"})


class CancelRequest(RpcSchema):
    """``POST /v1/privacy/requests/{id}/cancel``: the token of the mailed
    cancel link, or nothing when called with a session of the owner."""

    token = fields.String(validate=validate.Length(min=16, max=200),
                          metadata={"description": "the token of the mailed cancel link"})


class RequestQuery(PageQuery):
    """``GET /v1/privacy/requests?limit=&cursor=``"""


def RefusedRegions(**kw):
    return fields.List(
        fields.String(validate=REGION), validate=validate.Length(max=REFUSED_REGIONS_MAX),
        metadata={"description": "regions where your data must not be processed: "
                                 "generation skips providers in them (an empty list "
                                 "refuses none)"}, **kw)


class UpdateConsents(RpcSchema):
    """``PUT /v1/privacy/consents``: the purposes to change and/or the
    refused regions (replaced as a whole; at least one field)."""

    OPENAPI_EXTRA = {"minProperties": 1}

    marketing_email = fields.Boolean()
    analytics = fields.Boolean()
    preferences = fields.Boolean(metadata={"description": "preference cookies (theme, language, "
                                                          "prompt drafts)"})
    refused_regions = RefusedRegions()

    @validates_schema
    def at_least_one(self, data, **kwargs):
        if not data:
            raise ValidationError(f"give at least one of {', '.join(CONSENT_PURPOSES)}, "
                                  "refused_regions")

    @post_load
    def deduplicated(self, data, **kwargs):
        if "refused_regions" in data:
            data["refused_regions"] = sorted(set(data["refused_regions"]))
        return data


class AcceptPolicy(RpcSchema):
    """``POST /v1/privacy/policy/accept``"""

    version = fields.String(required=True, validate=POLICY_VERSION)


class PublishPolicy(RpcSchema):
    """``darkroom-ops privacy publish-policy``: a material version must be
    accepted again by every user; a minor one need not be."""

    version = fields.String(required=True, validate=POLICY_VERSION)
    material = fields.Boolean(required=True)
    summary = fields.String(required=True, validate=validate.Length(min=1, max=2000))


class MarketingMail(RpcSchema):
    """``notifications.send_marketing``: one campaign's mail to these users;
    only those who opted in (and are not restricted) get it, each once."""

    campaign_id = fields.UUID(required=True)
    subject = fields.String(required=True, validate=validate.Length(min=1, max=200))
    text = fields.String(required=True, validate=validate.Length(min=1, max=20000))
    user_ids = fields.List(fields.UUID(), required=True, validate=validate.Length(min=1, max=1000))


# ---------------------------------------------------------------- responses


class PartView(RpcSchema):
    service = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(PART_STATUSES))
    completed_at = fields.AwareDateTime(allow_none=True)
    overdue = fields.Boolean(required=True)


class RequestView(RpcSchema):
    id = fields.UUID(required=True)
    type = fields.String(required=True, validate=validate.OneOf(REQUEST_TYPES))
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    created_at = fields.AwareDateTime(required=True)
    due_at = fields.AwareDateTime(required=True)
    overdue = fields.Boolean(required=True)
    starts_at = fields.AwareDateTime(
        allow_none=True, metadata={"description": "an erasure: the end of its grace period "
                                                  "(cancellable until then); every credential "
                                                  "is revoked then and it runs shortly after"})
    completed_at = fields.AwareDateTime(allow_none=True)
    cancelled_at = fields.AwareDateTime(allow_none=True)
    parts = fields.List(fields.Nested(PartView), required=True)
    download_url = fields.String(
        allow_none=True, metadata={"description": "a finished export: signed, short-lived"})
    download_expires_at = fields.AwareDateTime(
        allow_none=True, metadata={"description": "when the stored archive is deleted"})
    certificate_url = fields.String(
        allow_none=True, metadata={"description": "a finished erasure: its certificate"})


RequestPage = page_of(RequestView, "RequestPage")


class CertificatePart(RpcSchema):
    service = fields.String(required=True)
    rows_deleted = fields.Integer(required=True)
    rows_pseudonymised = fields.Integer(required=True)
    objects_deleted = fields.Integer(required=True)
    bytes_deleted = fields.Integer(required=True)
    tables = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    started_at = fields.AwareDateTime(allow_none=True)
    finished_at = fields.AwareDateTime(allow_none=True)
    confirmed_at = fields.AwareDateTime(required=True)


class Certificate(RpcSchema):
    """An erasure's certificate: what every service removed, and when. No
    personal data: not the user's id, not their address."""

    request_id = fields.UUID(required=True)
    requested_at = fields.AwareDateTime(required=True)
    started_at = fields.AwareDateTime(allow_none=True)
    completed_at = fields.AwareDateTime(required=True)
    services = fields.List(fields.Nested(CertificatePart), required=True)
    totals = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)


class ConsentChange(RpcSchema):
    purpose = fields.String(required=True, validate=validate.OneOf(CONSENT_PURPOSES))
    granted = fields.Boolean(required=True)
    source = fields.String(required=True)
    policy_version = fields.String(allow_none=True)
    changed_at = fields.AwareDateTime(required=True)


class Consents(RpcSchema):
    marketing_email = fields.Boolean(required=True)
    analytics = fields.Boolean(required=True)
    preferences = fields.Boolean(required=True)
    refused_regions = RefusedRegions(required=True)
    refused_regions_changed_at = fields.AwareDateTime(allow_none=True)
    updated_at = fields.AwareDateTime(allow_none=True)
    history = fields.List(fields.Nested(ConsentChange), required=True,
                          metadata={"description": "every change, newest first"})


class Policy(RpcSchema):
    version = fields.String(required=True)
    material = fields.Boolean(required=True)
    summary = fields.String(required=True)
    published_at = fields.AwareDateTime(required=True)
    material_version = fields.String(
        allow_none=True, metadata={"description": "the latest version users must accept"})


class PolicyStatus(RpcSchema):
    current = fields.String(allow_none=True, required=True)
    accepted = fields.String(allow_none=True, required=True)
    acceptance_required = fields.Boolean(required=True)


class RetentionItem(RpcSchema):
    service = fields.String(required=True)
    data = fields.String(required=True)
    kept = fields.String(required=True)
    days = fields.Float(allow_none=True, metadata={"description": "the period in days, when fixed"})
    enforced_by = fields.String(required=True)


class Retention(RpcSchema):
    items = fields.List(fields.Nested(RetentionItem), required=True)
    unavailable = fields.List(fields.String(), required=True,
                              metadata={"description": "services that did not answer just now"})


# ---------------------------------------------------------------- breaches
# (services/privacy/breaches.py; docs/runbooks/breach.md)

BREACH_CATEGORIES = ("account", "credentials", "payments", "images", "prompts", "access_logs")


@register_event("privacy.breach_notice")
class BreachNotice(EventSchema):
    """Notifications mails ``user_id`` (the account's current address, asked
    of auth; nobody when the account is gone) the breach notice."""

    incident_id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)
    summary = fields.String(required=True, validate=validate.Length(min=1, max=5000))
    categories = fields.List(fields.String(validate=validate.OneOf(BREACH_CATEGORIES)),
                             required=True)
    detected_at = fields.AwareDateTime(required=True)


class OpenBreach(RpcSchema):
    summary = fields.String(required=True, validate=validate.Length(min=1, max=5000))
    categories = fields.List(fields.String(validate=validate.OneOf(BREACH_CATEGORIES)),
                             required=True, validate=validate.Length(min=1))
    detected_at = fields.AwareDateTime(required=True)


class Window(RpcSchema):
    """A time window ``[from, to)``: auth's ``users_active_between`` and
    storage's ``owners_between`` take one (who a breach may have touched)."""

    window_from = fields.AwareDateTime(required=True, data_key="from")
    window_to = fields.AwareDateTime(required=True, data_key="to")


class BreachWindow(Window):
    categories = fields.List(fields.String(validate=validate.OneOf(BREACH_CATEGORIES)),
                             load_default=list)


class BreachReport(RpcSchema):
    contact = fields.String(required=True, validate=validate.Length(min=1, max=500))
    measures = fields.List(fields.String(validate=validate.Length(min=1, max=2000)),
                           required=True, validate=validate.Length(min=1))
    consequences = fields.List(fields.String(validate=validate.Length(min=1, max=2000)),
                               load_default=list)


class BreachView(RpcSchema):
    """An incident as operators see it (services/privacy/breaches.py ``view``)."""

    id = fields.UUID(required=True)
    summary = fields.String(required=True)
    categories = fields.List(fields.String(), required=True)
    state = fields.String(required=True, metadata={"description": "open | reported"})
    detected_at = fields.AwareDateTime(required=True)
    opened_at = fields.AwareDateTime(required=True)
    deadline_at = fields.AwareDateTime(required=True, metadata={
        "description": "the regulator's deadline: detected_at + 72 hours"})
    authority_deadline = fields.AwareDateTime(required=True, metadata={
        "description": "the same deadline (the console's name for it)"})
    hours_left = fields.Float(allow_none=True, metadata={
        "description": "until the deadline, while open (negative once it passed)"})
    overdue = fields.Boolean(required=True, metadata={
        "description": "still open 48 hours after detection"})
    affected = fields.Integer(required=True, metadata={"description": "people affected"})
    records = fields.Integer(required=True)
    affected_at = fields.AwareDateTime(allow_none=True)
    notified_at = fields.AwareDateTime(allow_none=True)
    reported_at = fields.AwareDateTime(allow_none=True)
    notices = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True,
                          metadata={"description": "notices by state"})


class BreachList(RpcSchema):
    items = fields.List(fields.Nested(BreachView), required=True)


# ---------------------------------------------------------------- operators

OPERATOR_REQUEST_FILTERS = ("open", "all")


class OperatorRequestQuery(RpcSchema):
    """``GET /v1/admin/privacy-requests?status=open|all``"""

    status = fields.String(load_default="open", validate=validate.OneOf(OPERATOR_REQUEST_FILTERS),
                           metadata={"description": "open (not completed or cancelled) or all"})


class OperatorRequest(RpcSchema):
    id = fields.UUID(required=True)
    user_id = fields.UUID(allow_none=True, required=True, metadata={
        "description": "null once the account is erased"})
    kind = fields.String(required=True, validate=validate.OneOf(REQUEST_TYPES))
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    created_at = fields.AwareDateTime(required=True)
    due_at = fields.AwareDateTime(required=True)
    overdue = fields.Boolean(required=True)
    completed_at = fields.AwareDateTime(allow_none=True, required=True)


class OperatorRequests(RpcSchema):
    items = fields.List(fields.Nested(OperatorRequest), required=True)
