"""Headless Chromium signs in through the pages: sign-in form, the mailed link, confirm, account."""

from __future__ import annotations

import uuid

import pytest

from conftest import make_config
from odsmedia.auth.service import AUTH
from test_auth import LINK, mails_to

pytestmark = pytest.mark.browser


@pytest.fixture
def config(service_urls, tmp_path):
    return make_config(service_urls, tmp_path / "data",
                       ODS_REDIS_PREFIX=f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:")


async def sign_in_page(page, client, address: str) -> None:
    """``page`` signs in as ``address`` the way a person does, through the shipped pages: the
    sign-in form, the mailed link opened in this browser, confirmed there (a first sign-in
    also answers the age question).  The browser holds a session of its own, never one
    handed over from the test client."""
    auth = client.server.app[AUTH]
    sent = len(mails_to(auth.config, address))
    await page.goto(str(client.make_url("/signin")))
    await page.fill("#email", address)
    await page.click("#send")
    await page.wait_for_selector("#status:not([hidden])", timeout=15000)
    await auth.drain()
    mails = mails_to(auth.config, address)
    assert len(mails) == sent + 1
    await page.goto(str(client.make_url(LINK.search(mails[-1].get_content()).group(0))))
    await page.click("#signin")
    # (A selector, not wait_for_function: the pages' CSP refuses the eval that would need.)
    await page.wait_for_selector("#account:not([hidden]), #age-box:not([hidden])", timeout=15000)
    if not page.url.endswith("/account"):
        await page.check("#age")
        await page.click("#signin")
        await page.wait_for_url("**/account", timeout=15000)
    await page.wait_for_selector("#account:not([hidden])", timeout=15000)


async def test_sign_in_through_the_pages(client, config, db, browser):
    address = f"browser-{uuid.uuid4().hex[:8]}@example.test"
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(str(client.make_url("/signin")))
    await page.fill("#email", address)
    await page.click("#send")
    await page.wait_for_selector("#status:not([hidden])", timeout=15000)
    assert "Check your inbox" in await page.text_content("#status")

    await client.server.app[AUTH].drain()
    [mail] = mails_to(config, address)
    match = LINK.search(mail.get_content())
    url = match.group(0)
    link = str(client.make_url(url))

    # Opening the link (as a mail scanner would) signs nobody in.
    await page.goto(link)
    await page.wait_for_selector("#signin")
    assert await db.fetchval("SELECT used_at FROM magic_links WHERE email = $1", address) is None
    assert "#token" not in page.url  # the token is wiped from the address bar

    # First sign-in: the age question appears, then the account page.
    await page.click("#signin")
    await page.wait_for_selector("#age-box:not([hidden])", timeout=15000)
    # A question for a newcomer, not an error: no error's red.
    assert "Confirm your age" in await page.text_content("#error")
    assert await page.get_attribute("#error", "class") in ("", None)
    await page.check("#age")
    await page.click("#signin")
    await page.wait_for_url("**/account", timeout=15000)
    await page.wait_for_selector("#account:not([hidden])", timeout=15000)
    assert await page.text_content("#email") == address
    assert "ods_session" not in await page.evaluate("document.cookie")  # HttpOnly
    # Signed in, the home page offers the account, not a second sign-in (no rooms of one's own needed).
    await page.goto(str(client.make_url("/")))
    await page.wait_for_selector("#account-link:text-is('Account')", timeout=15000)
    assert await page.get_attribute("#account-link", "href") == "/account"
    await page.goto(str(client.make_url("/account")))
    await page.wait_for_selector("#account:not([hidden])", timeout=15000)

    # Change the name (a CSRF-protected PATCH from the page's script), then sign out.
    await page.fill("#display-name", "Browser Person")
    await page.click("#name-form button")
    await page.wait_for_selector("#name-status:has-text('Saved')", timeout=15000)
    assert await db.fetchval("SELECT display_name FROM accounts WHERE email = $1", address) == "Browser Person"
    await page.click("#sign-out")
    await page.wait_for_url("**/signin", timeout=15000)
    await page.goto(str(client.make_url("/account")))
    await page.wait_for_selector("#signed-out:not([hidden])", timeout=15000)
    assert errors == []
