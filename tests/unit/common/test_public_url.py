"""PUBLIC_BASE_URL, the one base of the URLs Darkroom hands out, and APP_BASE_URL,
the base of a separate web app's pages (services/common/config.py), as the
services read them from their config files."""

from __future__ import annotations

import pytest

from services.billing.settings import BillingSettings
from services.common.config import CONFIG_DIR, app_base_url, load_config, public_base_url
from services.notifications.notify import resolved_mail_settings, template_context
from services.storage.settings import StorageSettings


def test_public_base_url_defaults_to_make_devs_gateway_and_loses_its_slash():
    assert public_base_url({}) == "http://127.0.0.1:8000"
    assert public_base_url({"PUBLIC_BASE_URL": "https://api.example.com/darkroom/"}) \
        == "https://api.example.com/darkroom"


@pytest.mark.parametrize("bad", ["api.example.com", "ftp://api.example.com", "https://",
                                 "https://api.example.com/?x=1", "https://a.example#top"])
def test_a_base_that_is_not_an_absolute_http_url_stops_the_start(bad):
    with pytest.raises(ValueError, match="PUBLIC_BASE_URL must be an absolute http"):
        public_base_url({"PUBLIC_BASE_URL": bad})
    with pytest.raises(ValueError, match="APP_BASE_URL must be"):
        app_base_url({"APP_BASE_URL": bad})


def test_every_service_refuses_a_bad_base_at_start(monkeypatch):
    monkeypatch.setenv("PUBLIC_BASE_URL", "localhost:8000")
    for build, name in ((StorageSettings.from_config, "storage"),
                        (BillingSettings.from_config, "billing"),
                        (resolved_mail_settings, "notifications")):
        with pytest.raises(ValueError, match="PUBLIC_BASE_URL must be"):
            build(load_config(CONFIG_DIR / f"{name}.yaml"))


def test_the_app_base_is_the_public_base_unless_a_web_app_is_named():
    assert app_base_url({"PUBLIC_BASE_URL": "https://api.example", "APP_BASE_URL": ""}) \
        == "https://api.example"
    assert app_base_url({"PUBLIC_BASE_URL": "https://api.example",
                         "APP_BASE_URL": "https://app.example/"}) == "https://app.example"


def test_one_variable_moves_every_url_of_every_service(monkeypatch):
    monkeypatch.setenv("PUBLIC_BASE_URL", "http://127.0.0.1:18000")
    monkeypatch.delenv("APP_BASE_URL", raising=False)
    base = "http://127.0.0.1:18000"
    storage = StorageSettings.from_config(load_config(CONFIG_DIR / "storage.yaml"))
    billing = BillingSettings.from_config(load_config(CONFIG_DIR / "billing.yaml"))
    mail = resolved_mail_settings(load_config(CONFIG_DIR / "notifications.yaml"))
    assert storage.public_base_url == base
    assert (billing.checkout_success_url, billing.checkout_cancel_url) \
        == (f"{base}/checkout/success", f"{base}/checkout/cancel")
    assert template_context("news", {}, mail)["app_base_url"] == base

    monkeypatch.setenv("APP_BASE_URL", "https://app.example")
    billing = BillingSettings.from_config(load_config(CONFIG_DIR / "billing.yaml"))
    mail = resolved_mail_settings(load_config(CONFIG_DIR / "notifications.yaml"))
    assert billing.checkout_success_url == "https://app.example/checkout/success"
    assert template_context("news", {}, mail)["app_base_url"] == "https://app.example"
    assert StorageSettings.from_config(load_config(CONFIG_DIR / "storage.yaml")).public_base_url \
        == base  # the files are the gateway's, whatever serves the pages
