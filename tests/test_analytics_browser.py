"""Headless Chromium reads the shipped report and operator pages as a signed-in host and operator."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path

import pytest

from conftest import make_config
from odsmedia.analytics import policy
from test_analytics_pages import synthetic_session
from odsmedia.auth.service import AUTH
from test_auth import mails_to, sign_in
from test_auth_browser import sign_in_page

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
# Screenshots land here too when set (to look at them).
SHOTS = os.environ.get("ODS_TEST_SCREENSHOTS", "")


@pytest.fixture
def config(service_urls, tmp_path):
    return make_config(service_urls, tmp_path / "data", ODS_ANALYTICS_SAMPLE_INTERVAL="3600",
                       ODS_REDIS_PREFIX=f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:")


async def signed_in_page(browser, client, viewport, address: str):
    """A browser page signed in as ``address`` through the sign-in pages."""
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    await sign_in_page(page, client, address)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Failed loads are caught by URL below ("Failed to load resource" names none; the
    # browser's own favicon probe of the static pages is one).
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return page, errors


async def shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / path.name)
    return path


async def test_host_reads_the_report_on_a_phone_and_a_desktop(client, db, browser, room_factory, tmp_path):
    _, host = await sign_in(client)
    room = await room_factory(owner_id=host["id"], title="Live coding")
    episode = await synthetic_session(db, room)
    for name, viewport in (("report-phone", PHONE), ("report-desktop", DESKTOP)):
        page, errors = await signed_in_page(browser, client, viewport, host["email"])
        resp = await page.goto(str(client.make_url(f"/episodes/{episode}/report")))
        assert resp.status == 200
        assert await page.text_content("#report-title") == "Building an SFU"
        assert await page.text_content("#stat-peak dd") == "2"
        # Three charts drawn, each with its data: the viewer line has one point per sample.
        assert await page.locator("figure.chart svg").count() == 3
        points = await page.get_attribute("#chart-viewers polyline", "points")
        assert len(points.split()) == 30
        # Minute 0: messages; minute 1: messages and a question.
        assert await page.locator("#chart-chat rect.bar").count() == 3
        assert len((await page.get_attribute("#chart-retention polyline", "points")).split()) == 31
        # Charts are visible and sized to the viewport: nothing scrolls sideways on a phone.
        box = await page.locator("#chart-viewers svg").bounding_box()
        assert 0 < box["width"] <= viewport["width"] and box["height"] > 80
        assert await page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")
        assert await page.locator("#table-top_questions tbody tr").count() == 2
        await shot(page, tmp_path, name)
        assert errors == []
        await page.context.close()


async def test_operator_sees_the_service_exports_csv_and_deletes_an_account(client, db, browser, room_factory,
                                                                           tmp_path):
    _, someone = await sign_in(client)
    client.session.cookie_jar.clear()
    _, operator = await sign_in(client)
    await db.execute("INSERT INTO operators (account_id) VALUES ($1)", operator["id"])
    room = await room_factory()
    episode = await synthetic_session(db, room, length=120)
    page, errors = await signed_in_page(browser, client, DESKTOP, operator["email"])
    resp = await page.goto(str(client.make_url("/operator")))
    assert resp.status == 200
    assert await page.locator("#chart-days svg").count() == 1 and await page.locator("#chart-watch svg").count() == 1
    await page.click(f'#table-sessions a[href="/episodes/{episode}/report"]')
    await page.wait_for_url(f"**/episodes/{episode}/report")
    await page.wait_for_selector("#chart-viewers svg")
    await page.go_back()
    async with page.expect_download() as download:
        await page.click('#table-sessions a.csv')
    csv_path = await (await download.value).path()
    assert str(episode) in Path(csv_path).read_text()
    await shot(page, tmp_path, "operator-desktop")

    page.on("dialog", lambda dialog: dialog.accept())
    await page.fill("#delete-email", someone["email"])
    await page.fill("#delete-reason", "under-16 report")
    await page.click("#delete-account")
    await page.wait_for_selector("#delete-status[data-state=deleted]", timeout=15000)
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE id = $1", someone["id"]) == 0
    assert await db.fetchval("SELECT reason FROM account_deletions WHERE account_id = $1",
                             someone["id"]) == "under-16 report"
    await page.fill("#delete-email", someone["email"])
    await page.fill("#delete-reason", "again")
    await page.click("#delete-account")
    await page.wait_for_selector("#delete-status[data-state=failed]", timeout=15000)
    assert "no account" in await page.text_content("#delete-status")
    await page.set_viewport_size(PHONE)
    await shot(page, tmp_path, "operator-phone")
    # The refused second attempt is the only failed request.
    assert errors == [f"404 {client.make_url('/api/operator/accounts/delete')}"]


async def test_a_material_policy_change_shows_a_notice_until_acknowledged(client, db, browser, tmp_path):
    _, account = await sign_in(client)
    version = f"b-{uuid.uuid4().hex[:8]}"
    # Published after the account exists, so it must be acknowledged.
    await policy.publish(db, "Privacy Policy\n\nA material change.\n", version=version, material=True)
    await policy.send_pending(db, client.app[AUTH].mailer, public_url=str(client.make_url("")).rstrip("/"))
    [mail] = [m for m in mails_to(client.app[AUTH].config, account["email"])
              if m["X-ODS-Template"] == "policy_changed"]
    assert version in mail["Subject"]
    page, errors = await signed_in_page(browser, client, PHONE, account["email"])
    await page.goto(str(client.make_url("/account")))
    await page.wait_for_selector("#policy-notice", timeout=15000)
    assert version in await page.text_content("#policy-notice")
    await shot(page, tmp_path, "policy-notice-phone")
    await page.click("#policy-ack")
    await page.wait_for_selector("#policy-notice", state="detached", timeout=15000)
    assert await db.fetchval("SELECT version FROM policy_acknowledgements WHERE account_id = $1",
                             account["id"]) == version
    await page.goto(str(client.make_url("/privacy")))
    assert await page.get_attribute("#policy-version", "data-version") == version
    await shot(page, tmp_path, "privacy-phone")
    await page.wait_for_load_state("networkidle")
    assert await page.locator("#policy-notice").count() == 0
    assert errors == []


async def test_the_replay_page_reports_plays_and_retention_unless_the_browser_opts_out(
        aiohttp_client, service_urls, tmp_path, room_factory, browser, db):
    from odsmedia.analytics.events import AUDIENCE_RECORDER
    from odsmedia.app import make_app
    from test_replay_browser import record

    client = await aiohttp_client(make_app(make_config(
        service_urls, tmp_path / "data", ODS_RECORDING_SEGMENT_SECONDS="2", ODS_RECORDING_RECONNECT_GRACE="0",
        ODS_ANALYTICS_SAMPLE_INTERVAL="3600")))
    room = await room_factory()
    episode = await record(client.app, room, 6.0)
    audience = client.app[AUDIENCE_RECORDER]
    desktop_chrome = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                      "Chrome/131.0.0.0 Safari/537.36")
    for opted_out in (True, False):
        headers = {"Sec-GPC": "1"} if opted_out else {}
        context = await browser.new_context(user_agent=desktop_chrome, extra_http_headers=headers)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        beacons: list[dict] = []
        page.on("response", lambda r: beacons.append(r) if r.url.endswith("/api/analytics/replay") else None)
        await page.goto(str(client.make_url(f"/episodes/{episode}/watch")))
        await page.wait_for_function("() => document.querySelector('video').ended", timeout=30000)
        deadline = asyncio.get_running_loop().time() + 10
        while not beacons or not all(b.ok for b in beacons):
            assert asyncio.get_running_loop().time() < deadline, "no beacon answered"
            await asyncio.sleep(0.05)
        assert [(await b.json())["counted"] for b in beacons] == [not opted_out] * len(beacons)
        assert errors == []
        await context.close()
    await audience.flush()
    row = await db.fetchrow("SELECT * FROM analytics_episodes WHERE episode_id = $1", episode)
    assert row["replay_plays"] == 1 and 5.0 <= row["replay_seconds"] <= 6.5
    assert await db.fetchval("SELECT plays FROM analytics_replay_buckets WHERE episode_id = $1 AND bucket = 0",
                             episode) == 1
