"""Headless Chromium through the billing pages: plans -> checkout, account plan, org seats, room refusal."""

from __future__ import annotations

import time
import uuid

import pytest

from odsmedia.app import make_app
from test_auth import sign_in
from test_auth_browser import sign_in_page
from test_billing import billing_env, deliver, event, stripe_api, subscription  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


async def test_plans_checkout_account_and_org_pages(aiohttp_client, billing_env, stripe_api, browser,  # noqa: F811
                                                    room_factory, db):
    client = await aiohttp_client(make_app(billing_env()))
    _, account = await sign_in(client)
    context = await browser.new_context()
    base = str(client.make_url("/")).rstrip("/")
    # Stripe's hosted pages are not reachable from here: answer them locally.
    await context.route("https://checkout.stripe.test/**", lambda route: route.fulfill(body="stripe checkout"))
    await context.route("https://billing.stripe.test/**", lambda route: route.fulfill(body="stripe portal"))
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await sign_in_page(page, client, account["email"])

    # A paid room tells the person why they cannot enter.
    room = await room_factory("plans", plans=("pro",))
    await page.goto(f"{base}/rooms/{room.slug}")
    await page.wait_for_selector("#refusal:not([hidden])", timeout=15000)
    assert await page.get_attribute("#refusal", "data-status") == "402"
    assert "See plans" in await page.text_content("#refusal")
    # By the plan's name from the catalog, not its code.
    await page.wait_for_selector("#refusal .plan-names:text-is('Pro')", timeout=15000)
    assert "Subscribe to Pro to watch." in await page.text_content("#refusal")

    await page.goto(f"{base}/plans")
    await page.click("[data-plan=pro] button")
    await page.wait_for_url("https://checkout.stripe.test/**", timeout=15000)
    assert stripe_api.last("/v1/checkout/sessions")["line_items[0][price]"] == "price_pro_monthly"

    customer = await db.fetchval("SELECT customer_id FROM billing_customers WHERE account_id = $1", account["id"])
    await deliver(client, event("customer.subscription.created",
                                subscription(f"sub_{uuid.uuid4().hex[:12]}", customer), created=time.time()))
    await page.goto(f"{base}/account?checkout=success")
    await page.wait_for_selector("#plan:has-text('active')", timeout=15000)
    assert "Pro" in await page.text_content("#plan")
    await page.click("#portal")
    await page.wait_for_url("https://billing.stripe.test/**", timeout=15000)

    # Organization: created from the plans page, seats bought, members managed on its page.
    await page.goto(f"{base}/plans")
    await page.wait_for_selector("#org-create:not([hidden])", timeout=15000)
    await page.fill("#org-name", "Acme Browsers")
    await page.click("#org-form button")
    await page.wait_for_url("**/orgs/*", timeout=15000)
    org_id = int(page.url.rsplit("/", 1)[1])
    org_customer = f"cus_{uuid.uuid4().hex[:10]}"
    await db.execute("INSERT INTO billing_customers (customer_id, org_id) VALUES ($1, $2)", org_customer, org_id)
    await deliver(client, event("customer.subscription.created", subscription(
        f"sub_{uuid.uuid4().hex[:12]}", org_customer, price="price_team_seat", quantity=2), created=time.time()))
    await page.reload()
    await page.wait_for_selector("#seats:has-text('1 of 2')", timeout=15000)
    await page.fill("#member-email", f"m-{uuid.uuid4().hex[:6]}@example.test")
    await page.click("#add-form button")
    await page.wait_for_selector("#seats:has-text('2 of 2')", timeout=15000)
    await page.fill("#member-email", f"m-{uuid.uuid4().hex[:6]}@example.test")
    await page.click("#add-form button")
    await page.wait_for_selector("#error:not([hidden])", timeout=15000)
    assert "seats" in await page.text_content("#error")
    assert errors == []
    await context.close()


async def test_the_plans_page_says_when_nothing_can_be_bought(aiohttp_client, billing_env, browser):  # noqa: F811
    # No Stripe key: the catalog is shown, but no button leads to a 503.
    client = await aiohttp_client(make_app(billing_env(STRIPE_SECRET_KEY="", STRIPE_WEBHOOK_SECRET="")))
    page = await browser.new_page()
    try:
        await page.goto(str(client.make_url("/plans")))
        await page.wait_for_selector("#no-checkout", timeout=15000)
        assert await page.text_content("#no-checkout") == (
            "Subscriptions are not open on this server yet: no payment provider is set up.")
        assert await page.is_disabled("[data-plan=pro] button")
    finally:
        await page.close()

