"""deploy/config/billing.yaml means the documented defaults, and the
environment can change each value."""

from __future__ import annotations

import pytest

from services.billing.settings import BillingSettings
from services.common.config import CONFIG_DIR, load_config


def test_the_config_file_gives_the_defaults(monkeypatch):
    for name in ("BILLING_DATABASE_URL", "STRIPE_WEBHOOK_SECRET", "BILLING_PLAN_PRO_MONTHLY_GRANT"):
        monkeypatch.delenv(name, raising=False)
    config = load_config(CONFIG_DIR / "billing.yaml")
    assert config["DATABASE_URL"] == "sqlite:///var/billing.db"
    assert config["METRICS_PORT"] == 9104
    settings = BillingSettings.from_config(config)
    assert settings == BillingSettings()
    free = settings.plans["free"]
    assert (free.signup_grant, free.monthly_grant, free.retention_days, free.priority,
            free.paid) == (50, 20, 30, 0, False)
    assert [p.id for p in settings.plans.values() if p.paid] == ["pro", "studio"]
    assert settings.hold_ttl_seconds == 21600


def test_the_environment_overrides_values(monkeypatch):
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_new, whsec_old")
    monkeypatch.setenv("BILLING_PLAN_PRO_MONTHLY_GRANT", "800")
    monkeypatch.setenv("BILLING_SIGNUP_GRANT_EXPIRES_DAYS", "0")
    settings = BillingSettings.from_config(load_config(CONFIG_DIR / "billing.yaml"))
    assert settings.stripe_webhook_secrets == ("whsec_new", "whsec_old")
    assert settings.plans["pro"].monthly_grant == 800
    assert settings.signup_grant_expires_days is None


def test_renewing_plans_are_configured_from_the_environment(monkeypatch):
    monkeypatch.setenv("BILLING_PLAN_STUDIO_STRIPE_PRICE", "price_studio_monthly")
    monkeypatch.setenv("BILLING_SUBSCRIPTION_GRACE_DAYS", "10")
    monkeypatch.setenv("BILLING_PLAN_PRO_CREDITS_ROLL_OVER", "true")
    monkeypatch.setenv("STRIPE_API_VERSION", "2026-10-28.endive")
    settings = BillingSettings.from_config(load_config(CONFIG_DIR / "billing.yaml"))
    assert settings.plans["studio"].stripe_price == "price_studio_monthly"
    assert settings.plans["pro"].stripe_price is None  # inline monthly price
    assert settings.plans["pro"].credits_roll_over and not settings.plans["studio"].credits_roll_over
    assert (settings.subscription_grace_days, settings.stripe_api_version) == \
        (10, "2026-10-28.endive")
    with pytest.raises(ValueError, match="SUBSCRIPTION_GRACE_DAYS"):
        BillingSettings(subscription_grace_days=-1)


def test_a_job_type_without_a_price_stops_the_service():
    prices = dict(BillingSettings().prices)
    del prices["image-to-video"]
    with pytest.raises(ValueError, match="PRICES"):
        BillingSettings(prices=prices)
