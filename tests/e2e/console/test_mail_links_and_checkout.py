"""The pages other systems send people to: the password-reset link of the
mail, and Stripe Checkout's return page after buying a pack (the fake Stripe
of tests/fakes/stripe.py: the browser's visit to its checkout page is answered
by the test, which delivers the signed ``checkout.session.completed`` webhook
as Stripe would, then sends the browser back to the success URL)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from tests.e2e.console.conftest import eventually
from tests.e2e.stack import PASSWORD, post_stripe_event, token_from, verified_login

pytestmark = pytest.mark.e2e

NEW_PASSWORD = "a brand new passphrase for the console"


def test_reset_a_password_from_the_mail_link(stack, open_console):
    address, _, _ = verified_login(stack)
    console = open_console()
    page = console.page
    console.goto("/login")
    page.get_by_role("link", name="Forgot your password?").click()
    console.heading("Reset your password")
    page.get_by_label("Email").fill(address)
    page.get_by_role("button", name="Send the link").click()
    page.get_by_role("status").wait_for()
    console.visit("forgot-password", shot=False)
    mail = eventually(lambda: next((m for m in stack.mails_to(address)
                                    if "reset-password?token=" in str(m.get_body()
                                                                      .get_content())), None),
                      60, "the reset mail")
    token = token_from(mail)
    link = f"{stack.base_url}/reset-password?token={token}"
    assert link in mail.get_body(preferencelist=("plain",)).get_content()
    page.goto(link)
    console.heading("Choose a new password")
    page.get_by_label("New password").fill("short")
    page.get_by_role("button", name="Change password").click()
    assert page.url.endswith(f"token={token}")  # the browser refuses it: under 10 characters
    page.get_by_label("New password").fill(NEW_PASSWORD)
    console.visit("reset-password")
    page.get_by_role("button", name="Change password").click()
    console.heading("Sign in")
    page.get_by_text("Your password was changed.").wait_for()
    page.get_by_label("Email").fill(address)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    assert "invalid_credentials" in page.get_by_role("alert").inner_text()
    page.get_by_label("Password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    console.heading("Generate")
    # the link is good once
    page.goto(link)
    page.get_by_label("New password").fill(NEW_PASSWORD + " again")
    page.get_by_role("button", name="Change password").click()
    assert "invalid_token" in page.get_by_role("alert").inner_text()


def test_buy_a_pack_with_stripe_and_come_back(stack, open_console):
    address, _, token = verified_login(stack)
    balance = lambda: stack.call("GET", "/v1/billing/balance", token=token).json()["available"]  # noqa: E731
    before = eventually(balance, 30, "the signup grant")
    pack = stack.call("GET", "/v1/billing/prices").json()["packs"][0]
    console = open_console()
    page = console.page
    checkout = urlsplit(stack.stripe.sessions[0]["url"] if stack.stripe.sessions
                        else "https://checkout.stripe.test/")
    console.allowed_origins.append(f"{checkout.scheme}://{checkout.netloc}")
    paid = []

    def stripe_checkout_page(route):
        """Stripe's page: the buyer pays; Stripe sends its webhook and the buyer back."""
        session = next(s for s in stack.stripe.sessions if s["url"] == route.request.url)
        response = post_stripe_event(stack, stack.stripe.checkout_completed(session["id"]))
        paid.append(response.status_code)
        route.fulfill(status=303, headers={"Location": session["success_url"]})

    page.route("https://checkout.stripe.test/**", stripe_checkout_page)
    console.sign_in(address, PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Credits").click()
    console.heading("Credits")
    assert int(page.get_by_test_id("balance").inner_text()) == before
    console.visit("billing")
    page.get_by_role("button", name=f"Buy {pack['name']}").click()
    console.heading("Thank you")
    assert paid == [200]
    assert urlsplit(page.url).path == "/checkout/success"
    credits = page.get_by_test_id("order-credits")
    credits.wait_for()
    assert int(credits.inner_text()) == pack["credits"]
    console.visit("checkout-success")
    page.get_by_role("link", name="See your credits and orders").click()
    console.heading("Credits")
    eventually(lambda: int(page.get_by_test_id("balance").inner_text()) == before + pack["credits"], 30,
               "the new balance on the page")
    assert page.locator("li[data-order-status=paid]").count() == 1
    # the cancel page Stripe sends a buyer who gives up
    console.goto("/checkout/cancel")
    console.heading("Checkout cancelled")
    console.visit("checkout-cancel", shot=False)


def test_subscribe_to_a_plan_cancel_it_and_open_the_portal(stack, open_console):
    address, _, token = verified_login(stack)
    eventually(lambda: stack.call("GET", "/v1/billing/balance", token=token).json()["available"] > 0,
               30, "the signup grant")
    console = open_console()
    page = console.page
    console.allowed_origins += ["https://checkout.stripe.test", "https://billing.stripe.test"]

    def stripe_checkout_page(route):
        """The buyer subscribes on Stripe's page; Stripe's events, then back."""
        session = next(s for s in stack.stripe.sessions if s["url"] == route.request.url)
        assert session["mode"] == "subscription"
        for event in stack.stripe.complete_subscription(session["id"]):
            assert post_stripe_event(stack, event).status_code == 200
        route.fulfill(status=303, headers={"Location": session["success_url"]})

    portal = []

    def stripe_portal(route):
        portal.append(route.request.url)
        route.fulfill(status=200, content_type="text/html",
                      body="<!doctype html><html lang=en><title>Portal</title><h1>Stripe portal</h1></html>")

    page.route("https://checkout.stripe.test/**", stripe_checkout_page)
    page.route("https://billing.stripe.test/**", stripe_portal)
    console.sign_in(address, PASSWORD)
    console.goto("/billing")
    console.heading("Credits")
    page.get_by_role("button", name="Subscribe to Pro").click()
    console.heading("Thank you")
    page.get_by_test_id("order-credits").wait_for()
    console.goto("/billing")
    console.heading("Credits")
    status = page.get_by_test_id("subscription")
    status.wait_for()
    assert "active" in status.inner_text() and "renews" in status.inner_text()
    assert page.get_by_role("button", name="Subscribe to Pro").count() == 0
    console.visit("billing-plan", shot=False)
    page.get_by_role("button", name="Cancel at the end of the period").click()
    eventually(lambda: "ends" in status.inner_text(), 30, "the plan set to end")
    assert stack.call("GET", "/v1/billing/subscription", token=token).json()["cancel_at_period_end"]
    page.get_by_role("button", name="Manage payment and invoices").click()
    page.get_by_role("heading", name="Stripe portal").wait_for()
    assert portal and portal[0].startswith("https://billing.stripe.test/p/session/")


def test_buy_a_pack_with_paypal_the_return_page_captures_it(stack, fake_paypal, open_console):
    address, _, token = verified_login(stack)
    before = eventually(lambda: stack.call("GET", "/v1/billing/balance", token=token)
                        .json()["available"], 30, "the signup grant")
    pack = stack.call("GET", "/v1/billing/prices").json()["packs"][0]
    console = open_console()
    page = console.page
    console.allowed_origins.append("https://www.sandbox.paypal.com")

    def paypal_approve_page(route):
        """The buyer approves at PayPal, which sends the browser to the return URL."""
        order_id = parse_qs(urlsplit(route.request.url).query)["token"][0]
        fake_paypal.approve(order_id)
        context = fake_paypal.orders[order_id]["payment_source"]["paypal"]["experience_context"]
        back = f"{context['return_url']}&token={order_id}&PayerID=BUYER123"
        route.fulfill(status=302, headers={"Location": back})

    page.route("https://www.sandbox.paypal.com/**", paypal_approve_page)
    console.sign_in(address, PASSWORD)
    console.goto("/billing")
    console.heading("Credits")
    page.get_by_label("Pay with").select_option("paypal")
    page.get_by_role("button", name=f"Buy {pack['name']}").click()
    console.heading("Thank you")
    # the return page captured the approved order: paid, the credits there
    credits = page.get_by_test_id("order-credits")
    credits.wait_for()
    assert int(credits.inner_text()) == pack["credits"]
    assert stack.call("GET", "/v1/billing/balance", token=token).json()["available"] == \
        before + pack["credits"]
    [order] = [o for o in stack.call("GET", "/v1/billing/orders", token=token).json()["items"]]
    assert (order["provider"], order["status"]) == ("paypal", "paid")
