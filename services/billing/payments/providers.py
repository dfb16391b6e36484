"""Which payment provider takes an order's money.

The operator enables Stripe, PayPal or both (``BILLING_PAYMENT_PROVIDERS``,
the first being the default); a checkout may name one of those
(``provider``). The order keeps its provider (``orders.provider``), and every
later step (the checkout session, a capture, a refund) goes to that
provider's client. Both clients offer ``create_checkout_session`` with the
same keywords, answering a :class:`~services.billing.payments.stripe.CheckoutSession`.
"""

from __future__ import annotations

from services.billing.settings import BillingSettings
from services.common.errors import DomainError

STRIPE, PAYPAL = "stripe", "paypal"


def not_enabled(provider: str) -> DomainError:
    return DomainError("payment_provider_not_enabled",
                       f"payments through {provider} are not enabled here", 400,
                       {"provider": provider})


def chosen(settings: BillingSettings, data: dict) -> str:
    """The provider a checkout request names, or the default; 400
    ``payment_provider_not_enabled`` for one the operator did not enable."""
    provider = data.get("provider") or settings.payment_providers[0]
    require(settings, provider)
    return provider


def require(settings: BillingSettings, provider: str) -> None:
    if provider not in settings.payment_providers:
        raise not_enabled(provider)


def client_for(provider: str, stripe, paypal):
    """The client that opens a checkout session for ``provider``'s orders."""
    return paypal if provider == PAYPAL else stripe
