"""Billing service contracts: its events, RPC payloads and the objects it returns.

The gateway uses the request schemas (``Quote``, ``Checkout``, ``LedgerQuery``,
``OrderQuery``) as its HTTP body/query schemas and the response schemas to
shape docs/api.md's "Credits and payments" answers.

Credits are integers; money is integer minor units with an ISO-4217 currency
(lower case, as Stripe spells it).
"""

from __future__ import annotations

from enum import StrEnum

from marshmallow import ValidationError, fields, validate, validates_schema

from services.common.contracts.base import (
    EventSchema,
    PageQuery,
    RpcSchema,
    page_of,
    register_event,
)
from services.common.contracts.generation import (
    DEFAULT_N,
    DURATION_MAX_S,
    JOB_TYPES,
    MODEL_MAX,
    N_MAX,
    validate_size,
)

RELEASE_REASONS = ("failed", "cancelled", "expired")
ORDER_KINDS = ("pack", "plan")
PAYMENT_PROVIDERS = ("stripe", "paypal")


class OrderStatus(StrEnum):
    """An order's ``status``: ``pending`` until paid (``paid``) or given up
    (``failed``); ``partially_refunded`` or ``refunded`` after refunds."""

    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


ORDER_STATUSES = [status.value for status in OrderStatus]  # plain strings, for the OpenAPI

# open, then how Stripe closed it (warning_closed: an inquiry that never became
# a chargeback; prevented: stopped before it became one)
DISPUTE_STATUSES = ("open", "won", "lost", "warning_closed", "prevented")
ENTRY_KINDS = ("grant", "purchase", "hold", "capture", "release", "refund", "expire", "adjustment")

SHOTS_MAX = 16  # storyboard shots a quote prices


_id = validate.Regexp(r"^[a-z0-9][a-z0-9_-]{0,63}$", error="not a valid id")
_currency = validate.Regexp(r"^[a-z]{3}$", error="must be a lower-case ISO-4217 code")


# ---------------------------------------------------------------- events


class JobCreditsEvent(EventSchema):
    """Base of billing's answers about the credits of one attempt of a job."""

    job_id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)
    attempt = fields.Integer(required=True, validate=validate.Range(min=1))


@register_event("billing.credits_reserved")
class CreditsReserved(JobCreditsEvent):
    """The job's price is held: the job may run (``priority`` is the plan's)."""

    hold_id = fields.UUID(required=True)
    amount = fields.Integer(required=True, validate=validate.Range(min=0))
    plan = fields.String(required=True)
    priority = fields.Integer(required=True)
    hold_expires_at = fields.AwareDateTime(
        load_default=None, allow_none=True,
        metadata={"description": "when billing releases the hold (reason expired) unless "
                                 "the job ended first; the job must not start after it"},
    )


@register_event("billing.credits_insufficient")
class CreditsInsufficient(JobCreditsEvent):
    required = fields.Integer(required=True)
    available = fields.Integer(required=True)


@register_event("billing.credits_captured")
class CreditsCaptured(JobCreditsEvent):
    amount = fields.Integer(required=True, validate=validate.Range(min=0))


@register_event("billing.credits_released")
class CreditsReleased(JobCreditsEvent):
    amount = fields.Integer(required=True, validate=validate.Range(min=0))
    reason = fields.String(required=True, validate=validate.OneOf(RELEASE_REASONS))


@register_event("billing.plan_changed")
class PlanChanged(EventSchema):
    """A user's plan changed (signup, purchase, end of a paid period); storage
    keeps the plan's retention for the user's objects."""

    user_id = fields.UUID(required=True)
    plan = fields.String(required=True)
    retention_days = fields.Integer(required=True, validate=validate.Range(min=1, max=3650))


@register_event("billing.order_paid")
class OrderPaid(EventSchema):
    """An order was paid; notifications sends the receipt (no email here:
    notifications resolves the address from the user id)."""

    order_id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(ORDER_KINDS))
    item_id = fields.String(required=True)
    description = fields.String(required=True)
    credits = fields.Integer(required=True)
    amount = fields.Integer(required=True, metadata={"description": "minor units"})
    currency = fields.String(required=True)
    paid_at = fields.AwareDateTime(required=True)


@register_event("billing.order_refunded")
class OrderRefunded(EventSchema):
    order_id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)
    credits_reversed = fields.Integer(
        required=True, metadata={"description": "credits taken back by this refund (unspent only)"}
    )
    amount_refunded = fields.Integer(
        required=True, metadata={"description": "minor units refunded by this refund"}
    )
    currency = fields.String(required=True)
    total_amount_refunded = fields.Integer(
        load_default=None, metadata={"description": "minor units refunded so far, in total"}
    )
    status = fields.String(
        load_default=None, validate=validate.OneOf(["refunded", "partially_refunded"])
    )


# ---------------------------------------------------------------- requests


class UserRef(RpcSchema):
    """The ``user_id`` argument of every per-user RPC."""

    user_id = fields.UUID(required=True)


class LedgerQuery(PageQuery):
    """``GET /v1/billing/ledger?limit=&cursor=``"""


class OrderQuery(PageQuery):
    """``GET /v1/billing/orders?limit=&cursor=``"""


class Quote(RpcSchema):
    """What a job would cost: the fields of a generation request that set its price."""

    type = fields.String(required=True, validate=validate.OneOf(JOB_TYPES))
    n = fields.Integer(load_default=DEFAULT_N, validate=validate.Range(min=1, max=N_MAX))
    size = fields.String(load_default=None, allow_none=True, validate=validate_size)
    duration_s = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1, max=DURATION_MAX_S)
    )
    shots = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1, max=SHOTS_MAX)
    )
    model = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(min=1, max=MODEL_MAX),
        metadata={"description": "the provider entry that runs the job: its price override "
                                 "if the price list has one, else the job type's price"})


class Checkout(RpcSchema):
    """``POST /v1/billing/checkout``: exactly one of ``pack_id`` and ``plan_id``."""

    OPENAPI_EXTRA = {"oneOf": [{"required": ["pack_id"]}, {"required": ["plan_id"]}]}

    pack_id = fields.String(validate=_id)
    plan_id = fields.String(validate=_id)
    provider = fields.String(
        validate=validate.OneOf(PAYMENT_PROVIDERS),
        metadata={"description": "who takes the money, among those the operator enabled "
                                 "(BILLING_PAYMENT_PROVIDERS); the first of them when absent"})

    @validates_schema
    def exactly_one(self, data, **kwargs):
        if ("pack_id" in data) == ("plan_id" in data):
            raise ValidationError("give exactly one of pack_id and plan_id", "_schema")


class IdempotencyKey(RpcSchema):
    idempotency_key = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(min=1, max=200)
    )


class Adjust(RpcSchema):
    """An operator's correction: ``amount`` credits (signed, never 0)."""

    user_id = fields.UUID(required=True)
    amount = fields.Integer(
        required=True, validate=validate.Range(min=-10_000_000, max=10_000_000)
    )
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500))
    idempotency_key = fields.String(required=True, validate=validate.Length(min=1, max=200))

    @validates_schema
    def not_zero(self, data, **kwargs):
        if data.get("amount") == 0:
            raise ValidationError("must not be 0", "amount")


class StripeWebhook(RpcSchema):
    """The raw body (as received, it is what the signature covers) and the
    ``Stripe-Signature`` header."""

    payload = fields.String(required=True, validate=validate.Length(max=1_000_000))
    signature = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=4000))


class OrderRef(RpcSchema):
    order_id = fields.UUID(required=True)


class RefundOrder(RpcSchema):
    """An operator's refund through the payment provider: ``amount`` minor
    units (all that is not refunded yet when absent)."""

    order_id = fields.UUID(required=True)
    amount = fields.Integer(load_default=None, allow_none=True,
                            validate=validate.Range(min=1, max=100_000_000))


class PayPalWebhook(RpcSchema):
    """The raw body and PayPal's ``PAYPAL-*`` transmission headers."""

    payload = fields.String(required=True, validate=validate.Length(max=1_000_000))
    headers = fields.Dict(keys=fields.String(validate=validate.Length(max=100)),
                          values=fields.String(validate=validate.Length(max=4000)),
                          load_default=dict)


# ---------------------------------------------------------------- responses


class Money(RpcSchema):
    amount = fields.Integer(required=True, metadata={"description": "minor units"})
    currency = fields.String(required=True, validate=_currency)


class Balance(RpcSchema):
    available = fields.Integer(required=True, metadata={"description": "spendable now"})
    held = fields.Integer(required=True)
    frozen = fields.Integer(
        load_default=0,
        metadata={"description": "credits of orders whose payment is disputed: not spendable "
                                 "until the dispute is won"},
    )
    plan = fields.String(required=True)
    period_start = fields.AwareDateTime(required=True)
    period_end = fields.AwareDateTime(required=True)
    granted_this_period = fields.Integer(required=True)
    used_this_period = fields.Integer(required=True, metadata={"description": "credits captured"})
    plan_expires_at = fields.AwareDateTime(allow_none=True)


class LedgerEntry(RpcSchema):
    id = fields.UUID(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(ENTRY_KINDS))
    amount = fields.Integer(required=True, metadata={"description": "change to available"})
    held_change = fields.Integer(required=True, metadata={"description": "change to held"})
    balance_after = fields.Integer(required=True, metadata={"description": "available after"})
    job_id = fields.UUID(allow_none=True)
    order_id = fields.UUID(allow_none=True)
    created_at = fields.AwareDateTime(required=True)
    expires_at = fields.AwareDateTime(allow_none=True)
    attempt = fields.Integer(allow_none=True)
    reason = fields.String(allow_none=True)


LedgerPage = page_of(LedgerEntry, "LedgerPage")


class Plan(RpcSchema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    price = fields.Nested(Money, allow_none=True, required=True)
    signup_grant = fields.Integer(required=True)
    monthly_grant = fields.Integer(required=True)
    retention_days = fields.Integer(required=True)
    priority = fields.Integer(required=True)


class PlanList(RpcSchema):
    items = fields.List(fields.Nested(Plan), required=True)


class Pack(RpcSchema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    credits = fields.Integer(required=True)
    price = fields.Nested(Money, required=True)
    expires_days = fields.Integer(required=True)


class JobTypePrice(RpcSchema):
    """How one job type is priced (see docs/billing.md "Prices").

    Images (``unit`` "image"): each image costs ``credits_per_area`` per started
    ``area_pixels`` of its size (``ceil(w*h / area_pixels)``), at least
    ``minimum``; ``n`` images cost n times that. Video (``unit`` "second"):
    ``credits_per_second`` × ``duration_s`` (default ``default_duration_s``),
    or ``credits_per_shot`` × ``shots`` for a storyboard, at least ``minimum``.
    """

    type = fields.String(required=True, validate=validate.OneOf(JOB_TYPES))
    unit = fields.String(required=True, validate=validate.OneOf(["image", "second"]))
    area_pixels = fields.Integer(allow_none=True)
    credits_per_area = fields.Integer(allow_none=True)
    default_size = fields.String(allow_none=True)
    credits_per_second = fields.Integer(allow_none=True)
    credits_per_shot = fields.Integer(allow_none=True)
    default_duration_s = fields.Integer(allow_none=True)
    minimum = fields.Integer(required=True)


class Prices(RpcSchema):
    currency = fields.String(required=True, metadata={"description": 'always "credits"'})
    job_types = fields.List(fields.Nested(JobTypePrice), required=True)
    packs = fields.List(fields.Nested(Pack), required=True)


class QuoteBreakdown(RpcSchema):
    type = fields.String(required=True)
    n = fields.Integer(required=True)
    unit = fields.String(required=True)
    units_per_item = fields.Integer(
        required=True, metadata={"description": "areas per image, seconds or shots per item"}
    )
    credits_per_unit = fields.Integer(required=True)
    per_item = fields.Integer(required=True, metadata={"description": "after the minimum"})
    minimum = fields.Integer(required=True)
    size = fields.String(allow_none=True)
    duration_s = fields.Integer(allow_none=True)
    shots = fields.Integer(allow_none=True)
    model = fields.String(allow_none=True)


class QuoteAnswer(RpcSchema):
    price = fields.Integer(required=True)
    breakdown = fields.Nested(QuoteBreakdown, required=True)


class Subscription(RpcSchema):
    """The caller's plan renewing through Stripe (GET /v1/billing/subscription)."""

    plan = fields.String(required=True)
    status = fields.String(required=True, metadata={
        "description": "Stripe's: incomplete, active, past_due (a renewal failed: the plan "
                       "stays until grace_until), unpaid, canceled"})
    cancel_at_period_end = fields.Boolean(required=True, metadata={
        "description": "true: it ends at current_period_end and is not renewed"})
    current_period_end = fields.AwareDateTime(required=True, allow_none=True)
    grace_until = fields.AwareDateTime(required=True, allow_none=True, metadata={
        "description": "after a failed renewal: the day the account drops to the free plan"})
    created_at = fields.AwareDateTime(required=True)


class PortalLink(RpcSchema):
    url = fields.String(required=True, metadata={
        "description": "Stripe's customer portal for the caller (payment method, invoices, "
                       "cancellation); open it at once, it is short-lived"})


class CheckoutCreated(RpcSchema):
    order_id = fields.UUID(required=True)
    checkout_url = fields.String(required=True)


class Order(RpcSchema):
    id = fields.UUID(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(ORDER_KINDS))
    item_id = fields.String(required=True)
    description = fields.String(required=True)
    credits = fields.Integer(required=True)
    amount = fields.Integer(required=True)
    currency = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(ORDER_STATUSES))
    provider = fields.String(validate=validate.OneOf(PAYMENT_PROVIDERS),
                             metadata={"description": "who took (or takes) the money"})
    created_at = fields.AwareDateTime(required=True)
    paid_at = fields.AwareDateTime(allow_none=True)
    amount_refunded = fields.Integer(allow_none=True)
    dispute_status = fields.String(
        allow_none=True, validate=validate.OneOf(DISPUTE_STATUSES),
        metadata={"description": "the payment's dispute (chargeback), if any: open while the "
                                 "order's credits are frozen, then won or lost"},
    )


OrderPage = page_of(Order, "OrderPage")


class WebhookReceived(RpcSchema):
    received = fields.Boolean(required=True)
    duplicate = fields.Boolean(required=True)


class LedgerProblem(RpcSchema):
    user_id = fields.String(required=True, metadata={"description": "a user id (or a pseudonym)"})
    problem = fields.String(required=True)
    expected = fields.Raw(allow_none=True)
    actual = fields.Raw(allow_none=True)


class LedgerVerifyQuery(RpcSchema):
    """``verify_ledger(user_id, limit, cursor)``: one account, every account at
    once, or (``limit``) a page of accounts, the next one by ``cursor``."""

    user_id = fields.UUID(load_default=None, allow_none=True)
    limit = fields.Integer(load_default=None, allow_none=True,
                           validate=validate.Range(min=1, max=10000))
    cursor = fields.String(load_default=None, allow_none=True,
                           validate=validate.Length(min=1, max=200))

    @validates_schema
    def _one_way(self, data, **_):
        if data.get("user_id") is not None and (data.get("limit") or data.get("cursor")):
            raise ValidationError("One account, or pages of every account: not both.", "user_id")
        if data.get("cursor") is not None and data.get("limit") is None:
            raise ValidationError("A cursor goes with the limit of its pages.", "limit")


class LedgerVerification(RpcSchema):
    accounts_checked = fields.Integer(required=True)
    problems = fields.List(fields.Nested(LedgerProblem), required=True)
    # paged (``limit``) only: every account when the walk began (first page), the next page
    accounts_total = fields.Integer(allow_none=True)
    next_cursor = fields.String(allow_none=True)
