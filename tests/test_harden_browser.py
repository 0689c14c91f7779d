"""Sign-in redirects stay on this origin, driven through the shipped pages (issue 11, item 5)."""

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


async def test_next_after_sign_in_never_leaves_the_origin(client, config, browser):
    address = f"next-{uuid.uuid4().hex[:8]}@example.test"
    page = await browser.new_page()
    origin = str(client.make_url("/")).rstrip("/")
    visited: list[str] = []
    page.on("request", lambda req: visited.append(req.url))

    async def stop(route):
        visited.append(route.request.url)
        await route.abort()

    # Never resolve or reach a foreign host, even if the page tried to go there.
    await page.route(lambda url: not url.startswith(origin), stop)
    for i, (raw_next, landing) in enumerate((("/%5Cevil.example/phish", "/account"),
                                             ("/%09/evil.example", "/account"),
                                             ("/plans%3Ffrom%3Dsignin", "/plans?from=signin"))):
        await page.goto(f"{origin}/signin?next={raw_next}")
        await page.fill("#email", address)
        await page.click("#send")
        await page.wait_for_selector("#status:not([hidden])", timeout=15000)
        await client.server.app[AUTH].drain()
        link = LINK.search(mails_to(config, address)[-1].get_content()).group(0)
        await page.goto(str(client.make_url(link)))
        await page.click("#signin")
        if i == 0:
            await page.wait_for_selector("#age-box:not([hidden])", timeout=15000)
            await page.check("#age")
            await page.click("#signin")
        await page.wait_for_url(origin + landing, timeout=15000)
    assert not [url for url in visited if "evil.example" in url.split("?", 1)[0].split("#", 1)[0]]
