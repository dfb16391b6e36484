"""The ``BILLING`` section of deploy/config/billing.yaml as typed values.

Plans, packs and prices are data: operators change them in config, the code
only knows their shape. The configuration is checked when the service starts
(a plan list without the default plan, a job type without a price, a paid
plan without a currency stop it), so a typo never reaches a customer. The
price list's default image size and video duration are the job rules'
(``DEFAULT_SIZE``, ``DEFAULT_VIDEO_DURATION_S`` in
services/common/contracts/generation.py): the price a user is quoted for a
job that names neither is the price of the job generation makes, and a
configuration that says otherwise stops the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from marshmallow import ValidationError

from services.billing.payments.stripe import API_VERSION as STRIPE_API_VERSION
from services.common.config import DEFAULT_PUBLIC_BASE_URL, Section, app_base_url, flag
from services.common.contracts.billing import PAYMENT_PROVIDERS
from services.common.contracts.generation import (
    DEFAULT_SIZE,
    DEFAULT_VIDEO_DURATION_S,
    JOB_TYPES,
    parse_size,
)


def _int_or_none(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return int(value)


def _currency(value: Any) -> str:
    code = str(value or "").strip().lower()
    if len(code) != 3 or not code.isalpha():
        raise ValueError(f"not an ISO-4217 currency code: {value!r}")
    return code


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    price_amount: int | None  # minor units per period; None: not for sale (free)
    currency: str | None
    signup_grant: int
    monthly_grant: int
    retention_days: int
    priority: int
    # Stripe's recurring price for the plan (price_...); None: Checkout
    # creates it inline from price_amount and currency, monthly.
    stripe_price: str | None = None
    # A renewing plan's terms: its credits carry over from period to period
    # (never expire) instead of expiring at the period's end.
    credits_roll_over: bool = False

    @property
    def paid(self) -> bool:
        return self.price_amount is not None

    def view(self) -> dict:
        price = {"amount": self.price_amount, "currency": self.currency} if self.paid else None
        return {
            "id": self.id, "name": self.name, "price": price, "signup_grant": self.signup_grant,
            "monthly_grant": self.monthly_grant, "retention_days": self.retention_days,
            "priority": self.priority,
        }


@dataclass(frozen=True)
class Pack:
    id: str
    name: str
    credits: int
    price_amount: int
    currency: str
    expires_days: int

    def view(self) -> dict:
        return {
            "id": self.id, "name": self.name, "credits": self.credits,
            "price": {"amount": self.price_amount, "currency": self.currency},
            "expires_days": self.expires_days,
        }


@dataclass(frozen=True)
class PriceRule:
    """How one job type is priced; see :mod:`services.billing.pricing`."""

    type: str
    unit: str  # "image" or "second"
    minimum: int
    area_pixels: int | None = None
    credits_per_area: int | None = None
    default_size: str | None = None
    credits_per_second: int | None = None
    credits_per_shot: int | None = None
    default_duration_s: int | None = None
    # per-model overrides (``models:`` under the job type): the rule for a job
    # run by that provider entry; a model without one pays the type's rule
    models: Mapping[str, PriceRule] = field(default_factory=dict, compare=False)

    def view(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "models"}

    def for_model(self, model: str | None) -> PriceRule:
        """The rule a job run by provider entry ``model`` is priced by."""
        return self.models.get(model, self) if model else self


DEFAULT_PLANS: dict[str, dict] = {
    "free": {"name": "Free", "signup_grant": 50, "monthly_grant": 20,
             "retention_days": 30, "priority": 0},
    "pro": {"name": "Pro", "price_amount": 1500, "currency": "usd", "signup_grant": 0,
            "monthly_grant": 500, "retention_days": 90, "priority": 5},
    "studio": {"name": "Studio", "price_amount": 4900, "currency": "usd", "signup_grant": 0,
               "monthly_grant": 2000, "retention_days": 365, "priority": 10},
}
DEFAULT_PACKS: dict[str, dict] = {
    "small": {"name": "100 credits", "credits": 100, "price_amount": 500, "currency": "usd",
              "expires_days": 365},
    "large": {"name": "1000 credits", "credits": 1000, "price_amount": 4000, "currency": "usd",
              "expires_days": 365},
}
DEFAULT_PRICES: dict[str, dict] = {
    "text-to-image": {"unit": "image", "area_pixels": 262144, "credits_per_area": 1,
                      "default_size": DEFAULT_SIZE, "minimum": 1},
    "image-to-image": {"unit": "image", "area_pixels": 262144, "credits_per_area": 1,
                       "default_size": DEFAULT_SIZE, "minimum": 2},
    "image-to-video": {"unit": "second", "credits_per_second": 5, "credits_per_shot": 15,
                       "default_duration_s": DEFAULT_VIDEO_DURATION_S, "minimum": 10},
}


def _plans(raw: Mapping[str, Any]) -> dict[str, Plan]:
    plans = {}
    for plan_id, item in raw.items():
        item = item or {}
        price = _int_or_none(item.get("price_amount"))
        plans[str(plan_id)] = Plan(
            id=str(plan_id),
            name=str(item.get("name") or plan_id),
            price_amount=price,
            currency=_currency(item.get("currency")) if price is not None else None,
            signup_grant=int(item.get("signup_grant") or 0),
            monthly_grant=int(item.get("monthly_grant") or 0),
            retention_days=int(item["retention_days"]),
            priority=int(item.get("priority") or 0),
            stripe_price=str(item["stripe_price"]) if item.get("stripe_price") else None,
            credits_roll_over=flag(item.get("credits_roll_over", False)),
        )
    return plans


def _packs(raw: Mapping[str, Any]) -> dict[str, Pack]:
    return {
        str(pack_id): Pack(
            id=str(pack_id), name=str(item.get("name") or pack_id), credits=int(item["credits"]),
            price_amount=int(item["price_amount"]), currency=_currency(item.get("currency")),
            expires_days=int(item["expires_days"]),
        )
        for pack_id, item in raw.items()
    }


#: What a per-model override may change: amounts only. The unit and the job
#: defaults (default_size, default_duration_s) stay the job type's.
MODEL_OVERRIDES = ("minimum", "area_pixels", "credits_per_area", "credits_per_second",
                   "credits_per_shot")


def _prices(raw: Mapping[str, Any]) -> dict[str, PriceRule]:
    rules = {}
    for job_type, item in raw.items():
        unit = str(item.get("unit") or "image")
        rule = PriceRule(
            type=str(job_type), unit=unit, minimum=int(item.get("minimum") or 0),
            area_pixels=_int_or_none(item.get("area_pixels")),
            credits_per_area=_int_or_none(item.get("credits_per_area")),
            default_size=item.get("default_size") or None,
            credits_per_second=_int_or_none(item.get("credits_per_second")),
            credits_per_shot=_int_or_none(item.get("credits_per_shot")),
            default_duration_s=_int_or_none(item.get("default_duration_s")),
        )
        rules[str(job_type)] = replace(rule, models=_model_rules(rule, item.get("models") or {}))
    return rules


def _model_rules(rule: PriceRule, raw: Mapping[str, Any]) -> dict[str, PriceRule]:
    """``BILLING.PRICES.<type>.models``: provider entry -> overrides of the type's amounts."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"BILLING.PRICES.{rule.type}.models: a mapping of model -> prices")
    models = {}
    for model, item in raw.items():
        item = item or {}
        wrong = sorted(set(item) - set(MODEL_OVERRIDES)) if isinstance(item, Mapping) else [item]
        if wrong:
            raise ValueError(f"BILLING.PRICES.{rule.type}.models.{model}: only "
                             f"{', '.join(MODEL_OVERRIDES)} may differ per model, not {wrong[0]}")
        amounts = {k: (int(v) if k == "minimum" else _int_or_none(v)) for k, v in item.items()}
        models[str(model)] = replace(rule, **amounts)
    return models


def check_job_defaults(rule: PriceRule) -> None:
    """The rule's default size or duration is the one generation gives a job
    that names none (the generation contract's); ValueError otherwise."""
    expected = {"image": ("default_size", DEFAULT_SIZE),
                "second": ("default_duration_s", DEFAULT_VIDEO_DURATION_S)}.get(rule.unit)
    if expected is None:
        return
    name, value = expected
    if getattr(rule, name) != value:
        raise ValueError(
            f"BILLING.PRICES.{rule.type}.{name} is {getattr(rule, name)!r}, but a job that "
            f"names none is made with {value!r} (services/common/contracts/generation.py): "
            f"set it to {value!r}")


@dataclass(frozen=True)
class BillingSettings:
    plans: dict[str, Plan] = field(default_factory=lambda: _plans(DEFAULT_PLANS))
    packs: dict[str, Pack] = field(default_factory=lambda: _packs(DEFAULT_PACKS))
    prices: dict[str, PriceRule] = field(default_factory=lambda: _prices(DEFAULT_PRICES))
    default_plan: str = "free"
    pseudonym_key: str = "dev-only-insecure-billing-pseudonym-key"
    hold_ttl_seconds: int = 21600
    signup_grant_expires_days: int | None = 30  # None: signup credits never expire
    grants_expire_at_period_end: bool = True
    plan_period_days: int = 30
    payment_retention_years: int = 5
    pending_order_timeout_seconds: int = 900  # no checkout session by then: failed
    checkout_session_ttl_seconds: int = 86400 + 3600  # Stripe sessions live 24 h
    stripe_api_base: str = "https://api.stripe.com"
    stripe_secret_key: str = "sk_test_dev_only"
    stripe_webhook_secrets: tuple[str, ...] = ("whsec_dev_only",)
    stripe_webhook_tolerance_seconds: int = 300
    stripe_timeout_seconds: float = 10.0
    stripe_api_version: str = STRIPE_API_VERSION
    # A renewal payment failed: the plan is kept this long, then the free plan.
    subscription_grace_days: int = 7
    # Where Stripe sends the customer back: pages under APP_BASE_URL (PUBLIC_BASE_URL).
    checkout_success_url: str = f"{DEFAULT_PUBLIC_BASE_URL}/checkout/success"
    checkout_cancel_url: str = f"{DEFAULT_PUBLIC_BASE_URL}/checkout/cancel"
    # Who takes the money (the first is the checkout's default): stripe, paypal or both.
    payment_providers: tuple[str, ...] = ("stripe",)
    paypal_base_url: str = "https://api-m.sandbox.paypal.com"
    paypal_client_id: str = ""
    paypal_client_secret: str = ""
    paypal_webhook_id: str = ""
    paypal_timeout_seconds: float = 10.0
    # Where Stripe's customer portal sends the customer back.
    portal_return_url: str = f"{DEFAULT_PUBLIC_BASE_URL}/billing"

    def __post_init__(self):
        default = self.plans.get(self.default_plan)
        if default is None:
            raise ValueError(f"BILLING.DEFAULT_PLAN {self.default_plan!r} is not in BILLING.PLANS")
        if default.paid:
            raise ValueError("BILLING.DEFAULT_PLAN must be a plan without a price")
        missing = set(JOB_TYPES) - set(self.prices)
        if missing:
            raise ValueError(f"BILLING.PRICES lacks {sorted(missing)}")
        rules = [r for rule in self.prices.values() for r in (rule, *rule.models.values())]
        for rule in rules:
            if rule.unit == "image" and not (rule.area_pixels and rule.credits_per_area is not None
                                             and rule.default_size):
                raise ValueError(f"BILLING.PRICES.{rule.type}: area_pixels, credits_per_area "
                                 "and default_size are required for images")
            if rule.unit == "second" and not (rule.credits_per_second is not None
                                              and rule.default_duration_s):
                raise ValueError(f"BILLING.PRICES.{rule.type}: credits_per_second and "
                                 "default_duration_s are required for video")
            if rule.unit == "image":
                try:
                    parse_size(rule.default_size)
                except ValidationError as exc:
                    raise ValueError(f"BILLING.PRICES.{rule.type}.default_size: {exc}") from None
            if rule.unit not in ("image", "second"):
                raise ValueError(f"BILLING.PRICES.{rule.type}: unit must be image or second")
            check_job_defaults(rule)
        if not self.stripe_webhook_secrets:
            raise ValueError("BILLING.STRIPE_WEBHOOK_SECRET must be set")
        if self.subscription_grace_days < 0:
            raise ValueError("BILLING.SUBSCRIPTION_GRACE_DAYS must be 0 or more")
        if not self.pseudonym_key:
            raise ValueError("BILLING.PSEUDONYM_KEY must be set")
        unknown = set(self.payment_providers) - set(PAYMENT_PROVIDERS)
        if not self.payment_providers or unknown:
            raise ValueError(f"BILLING.PAYMENT_PROVIDERS: one or more of {list(PAYMENT_PROVIDERS)}")
        if "paypal" in self.payment_providers and not (
                self.paypal_client_id and self.paypal_client_secret and self.paypal_webhook_id):
            raise ValueError("BILLING.PAYPAL_CLIENT_ID, PAYPAL_CLIENT_SECRET and "
                             "PAYPAL_WEBHOOK_ID must be set when PAYMENT_PROVIDERS has paypal")

    @property
    def free_plan(self) -> Plan:
        return self.plans[self.default_plan]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BillingSettings:
        """From a whole service config (its ``BILLING`` section) or the section itself."""
        reader, d = Section(config, "BILLING"), cls()
        section, get = reader.values, reader.get
        secrets = section.get("STRIPE_WEBHOOK_SECRET", d.stripe_webhook_secrets)
        if isinstance(secrets, str):
            secrets = secrets.split(",")
        return cls(
            plans=_plans(section["PLANS"]) if section.get("PLANS") else d.plans,
            packs=_packs(section["PACKS"]) if section.get("PACKS") else d.packs,
            prices=_prices(section["PRICES"]) if section.get("PRICES") else d.prices,
            default_plan=str(get("DEFAULT_PLAN", d.default_plan)),
            pseudonym_key=str(get("PSEUDONYM_KEY", d.pseudonym_key)),
            hold_ttl_seconds=int(get("HOLD_TTL_SECONDS", d.hold_ttl_seconds)),
            signup_grant_expires_days=_int_or_none(
                section.get("SIGNUP_GRANT_EXPIRES_DAYS", d.signup_grant_expires_days)
            ) or None,
            grants_expire_at_period_end=flag(
                get("GRANTS_EXPIRE_AT_PERIOD_END", d.grants_expire_at_period_end)
            ),
            plan_period_days=int(get("PLAN_PERIOD_DAYS", d.plan_period_days)),
            payment_retention_years=int(get("PAYMENT_RETENTION_YEARS", d.payment_retention_years)),
            pending_order_timeout_seconds=int(
                get("PENDING_ORDER_TIMEOUT_SECONDS", d.pending_order_timeout_seconds)
            ),
            checkout_session_ttl_seconds=int(
                get("CHECKOUT_SESSION_TTL_SECONDS", d.checkout_session_ttl_seconds)
            ),
            stripe_api_base=str(get("STRIPE_API_BASE", d.stripe_api_base)).rstrip("/"),
            stripe_secret_key=str(get("STRIPE_SECRET_KEY", d.stripe_secret_key)),
            stripe_webhook_secrets=tuple(s.strip() for s in secrets if s and s.strip()),
            stripe_webhook_tolerance_seconds=int(
                get("STRIPE_WEBHOOK_TOLERANCE_SECONDS", d.stripe_webhook_tolerance_seconds)
            ),
            stripe_timeout_seconds=float(get("STRIPE_TIMEOUT_SECONDS", d.stripe_timeout_seconds)),
            stripe_api_version=str(get("STRIPE_API_VERSION", d.stripe_api_version)),
            subscription_grace_days=int(get("SUBSCRIPTION_GRACE_DAYS",
                                            d.subscription_grace_days)),
            checkout_success_url=f"{app_base_url(section)}/checkout/success",
            checkout_cancel_url=f"{app_base_url(section)}/checkout/cancel",
            payment_providers=tuple(
                p.strip().lower() for p in str(get("PAYMENT_PROVIDERS", "stripe")).split(",")
                if p.strip()),
            paypal_base_url=str(get("PAYPAL_BASE_URL", d.paypal_base_url)).rstrip("/"),
            paypal_client_id=str(get("PAYPAL_CLIENT_ID", d.paypal_client_id)),
            paypal_client_secret=str(get("PAYPAL_CLIENT_SECRET", d.paypal_client_secret)),
            paypal_webhook_id=str(get("PAYPAL_WEBHOOK_ID", d.paypal_webhook_id)),
            paypal_timeout_seconds=float(get("PAYPAL_TIMEOUT_SECONDS", d.paypal_timeout_seconds)),
            portal_return_url=f"{app_base_url(section)}/billing",
        )
