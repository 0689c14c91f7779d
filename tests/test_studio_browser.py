"""The shipped pages as hosts, moderators and viewers use them, in headless Chromium.

Real identities only: host and moderator tokens minted by `odsmedia token`
(what an operator prints), the page's own anonymous cookie for viewers. No
test page, no attribute set by hand: each page finds its identity in the URL
that opened it, as a person's browser does.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import pytest

from conftest import ODSMEDIA, REPO, odsmedia_env, unique_slug
from test_cli import run_cli
from testsupport.ports import free_port

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


async def until(page, expression: str, timeout: float = 15.0) -> None:
    """Poll a JS expression with a deadline (the pages' CSP forbids wait_for_function's eval)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await page.evaluate(expression):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        await asyncio.sleep(0.05)


async def frames_decoded(page, timeout: float = 30.0) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        decoded = await page.evaluate("window.odsViewer.framesDecoded()")
        if decoded > 0 or loop.time() > deadline:
            return decoded
        await asyncio.sleep(0.1)


class Server:
    """`odsmedia serve` as an operator runs it, on a fixed port so it can restart there."""

    def __init__(self, env: dict[str, str], log_path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{env['ODS_HTTP_PORT']}"

    def start(self) -> None:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(ODSMEDIA + ["serve"], env=self.env, stdout=subprocess.PIPE, stderr=log,
                                     text=True, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if "listening on" in line:
                return
        raise AssertionError("server did not start: " + open(self.log_path).read()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(timeout=30) == 0
        self.proc = None


@pytest.fixture
def server(service_urls, tmp_path):
    env = odsmedia_env(service_urls, tmp_path / "data", ODS_HTTP_PORT=str(free_port()), ODS_LOG_FORMAT="text")
    srv = Server(env, tmp_path / "server.log")
    slug = unique_slug("studio")
    out = run_cli(env, "room", "create", slug, "--title", "Studio room")
    assert out.returncode == 0, out.stderr
    srv.slug = slug
    srv.token = lambda role: run_cli(env, "token", "--room", slug, "--role", role).stdout.strip()
    srv.start()
    yield srv
    srv.stop()


# Inputs, selects, text areas and videos without an accessible name.
UNLABELLED = """[...document.querySelectorAll('input, select, textarea, video')]
    .filter(e => e.offsetParent !== null)
    .filter(e => !(e.getAttribute('aria-label') || (e.labels && e.labels.length) || e.title))
    .map(e => e.outerHTML.slice(0, 80))"""


async def test_host_chats_as_host_and_a_moderator_deletes_and_mutes_the_camera(server, browser):
    host_token, mod_token = server.token("host"), server.token("moderator")
    assert host_token.startswith("ods_") and mod_token.startswith("ods_")
    errors: list[str] = []
    contexts = [await browser.new_context(viewport={"width": 1280, "height": 800}) for _ in range(3)]
    try:
        host, viewer, mod = [await c.new_page() for c in contexts]
        for name, page in (("host", host), ("viewer", viewer), ("mod", mod)):
            page.on("pageerror", lambda exc, name=name: errors.append(f"{name}: {exc}"))

        # The host opens the link `odsmedia token` gave them; the token leaves the address bar.
        await host.goto(f"{server.base}/rooms/{server.slug}/host?token={host_token}")
        await host.wait_for_selector("body[data-ready='1']", timeout=15000)
        assert host.url == f"{server.base}/rooms/{server.slug}/host"
        await host.wait_for_selector("section#chat[data-state='connected']", timeout=10000)
        assert await host.get_attribute("section#chat", "data-role") == "host"
        await host.fill(".chat-input", "Welcome, everyone")
        await host.press(".chat-input", "Enter")
        await host.wait_for_selector(".chat-list li .badge-host", timeout=10000)
        assert await host.text_content(".chat-list li .chat-name") == "Host"
        # Before going live the stage says what will be there, not a black box.
        assert await host.text_content("#preview-idle") == "Your camera shows here when you go live."
        assert await host.is_visible("#preview-idle")
        await host.click("#golive")
        await host.wait_for_selector("body[data-connection='connected']", timeout=30000)
        await host.wait_for_selector("#live-badge:not([hidden])")
        assert await host.is_hidden("#preview-idle")
        # The camera preview spans the host's stage (the viewer's two-cameras grid is not the host's).
        widths = await host.evaluate("[document.getElementById('preview').getBoundingClientRect().width,"
                                     " document.querySelector('.stage .videos').getBoundingClientRect().width]")
        assert widths[0] >= widths[1] - 1, widths

        # A guest watches; the host's message carries the host badge and the same name as the people list.
        await viewer.goto(f"{server.base}/rooms/{server.slug}?name=Grace")
        await viewer.wait_for_selector("body[data-ready='1']", timeout=15000)
        assert await frames_decoded(viewer) > 0, "the viewer page decoded no video"
        assert await viewer.text_content(".chat-list li .chat-name") == "Host"
        assert await viewer.text_content(".chat-list li .badge-host") == "Host"
        host_row = "#people li[data-role='host']"
        assert await viewer.text_content(f"{host_row} .person-name") == "Host"
        await viewer.wait_for_selector("section#chat[data-state='connected']")
        await viewer.fill(".chat-input", "spam spam spam")
        await viewer.click(".chat-send")
        await viewer.wait_for_selector(".chat-list li:nth-child(2)", timeout=10000)
        # One name per person: Grace in the host's people list and in chat.
        await until(host, "[...document.querySelectorAll('#people .person-name')].some(e => e.textContent === 'Grace')")
        assert await host.text_content(".chat-list li:nth-child(2) .chat-name") == "Grace"
        await until(host, "document.getElementById('viewer-count').textContent === '1 watching'")

        # The moderator opens the viewer page with their token: chat and people list both know them.
        await mod.goto(f"{server.base}/rooms/{server.slug}?token={mod_token}")
        await mod.wait_for_selector("section#chat[data-role='moderator']", timeout=15000)
        assert "token=" not in mod.url
        await until(mod, "document.querySelector(\"#people li[data-id] .badge-moderator\") !== null")
        spam = mod.locator(".chat-list li", has_text="spam spam spam")
        await spam.get_by_role("button", name="Delete").click()
        await until(viewer, "![...document.querySelectorAll('.chat-list .chat-text')]"
                            ".some(e => e.textContent === 'spam spam spam')")
        # Mute the host's camera from the people list: the viewer sees camera-off, the host is told.
        await mod.click(f"{host_row} button:has-text('Mute camera')")
        await viewer.wait_for_selector("figure[data-camera-off='1'] .camera-off:not([hidden])", timeout=10000)
        assert "muted by a moderator" in await viewer.text_content("figure .camera-off")
        await until(host, "document.getElementById('status').textContent.includes('moderator turned your camera off')")
        assert await host.is_visible("#preview-camera-off")
        await mod.wait_for_selector(f"{host_row} button:has-text('Unmute camera')", timeout=10000)
        await mod.click(f"{host_row} button:has-text('Unmute camera')")
        await viewer.wait_for_selector("figure[data-camera-off='0']", timeout=10000)
        # Every control has a name a screen reader says; one chat tab is the selected one.
        for page in (host, viewer, mod):
            assert await page.evaluate(UNLABELLED) == [], page.url
            assert await page.evaluate("document.querySelectorAll('[role=tab][aria-selected=true]').length") == 1
        # Kick from the people list: Grace's page says so and stops promising playback.
        grace_row = "#people li:has(.person-name:text-is('Grace'))"
        await mod.click(f"{grace_row} button:has-text('Kick')")
        box = await viewer.wait_for_selector("#refusal:not([hidden])", timeout=10000)
        assert await box.get_attribute("data-code") == "kicked"
        assert not await viewer.is_visible("section.stage")
        # Out of the room, the header keeps no count from before.
        assert await viewer.text_content("#viewer-count") == "" and not await viewer.is_visible("#live-badge")
        await until(host, "![...document.querySelectorAll('#people .person-name')].some(e => e.textContent === 'Grace')")
        assert errors == [], errors
    finally:
        for c in contexts:
            await c.close()


async def test_a_server_restart_and_the_viewer_plays_again_without_a_reload(server, browser):
    host_token = server.token("host")
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        host = await context.new_page()
        await host.goto(f"{server.base}/rooms/{server.slug}/host?token={host_token}")
        await host.wait_for_selector("body[data-ready='1']", timeout=15000)
        await host.click("#golive")
        await host.wait_for_selector("body[data-connection='connected']", timeout=30000)
        viewer = await context.new_page()
        await viewer.goto(f"{server.base}/rooms/{server.slug}")
        await viewer.wait_for_selector("body[data-ready='1']", timeout=15000)
        assert await frames_decoded(viewer) > 0
        await viewer.evaluate("window.__sameDocument = true")   # gone if the page reloaded

        server.stop()
        await until(viewer, "document.getElementById('status').textContent.includes('reconnecting')", timeout=10)
        await until(host, "document.getElementById('live-badge').hidden === true", timeout=10)
        server.start()
        back = time.monotonic()
        # The host page publishes again by itself; the viewer rejoins and plays the new publication.
        await host.wait_for_selector("body[data-connection='connected']", timeout=15000)
        await viewer.wait_for_selector("body[data-connection='connected']", timeout=15000)
        decoded = await frames_decoded(viewer, timeout=max(0.5, 15 - (time.monotonic() - back)))
        assert decoded > 0, "the viewer did not play again within 15 s of the restart"
        assert time.monotonic() - back < 15
        assert await viewer.evaluate("window.__sameDocument === true")
        await viewer.wait_for_selector("section#chat[data-state='connected']",
                                       timeout=max(1000, 15000 - 1000 * (time.monotonic() - back)))
        assert await viewer.text_content("#status") != "" and await viewer.is_visible("#live-badge")
    finally:
        await context.close()


async def test_a_phone_shows_video_then_chat(server, browser):
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = await context.new_page()
        await page.goto(f"{server.base}/rooms/{server.slug}")
        await page.wait_for_selector("section#chat[data-state='connected']", timeout=15000)
        stage = await page.locator("section.stage").bounding_box()
        chat = await page.locator("section#chat").bounding_box()
        assert stage["width"] <= 390 and chat["width"] <= 390
        assert stage["y"] < chat["y"] and chat["y"] >= stage["y"] + stage["height"]
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390   # nothing sideways
    finally:
        await context.close()


async def test_home_lists_public_rooms_live_first_and_errors_are_pages(client, browser, room_factory, db):
    quiet = await room_factory(title="Quiet room")
    live = await room_factory(title="Live room")
    members = await room_factory(policy="signed-in", title="Members room")
    await db.execute("INSERT INTO episodes (room_id, storage_key, status) VALUES ($1, 'k', 'live')", live.id)
    page = await browser.new_page()
    try:
        await page.goto(str(client.make_url("/")))
        await page.wait_for_selector(f"#rooms li[data-room='{live.slug}']", timeout=10000)
        slugs = await page.eval_on_selector_all("#rooms li", "els => els.map(e => e.dataset.room)")
        assert slugs.index(live.slug) < slugs.index(quiet.slug) and members.slug not in slugs
        assert await page.is_visible(f"#rooms li[data-room='{live.slug}'] .live-badge")
        assert not await page.is_visible("#mine-section")
        # A page URL nobody serves is a page; an API URL stays JSON.
        response = await page.goto(str(client.make_url("/no/such/page")))
        assert response.status == 404 and "text/html" in response.headers["content-type"]
        assert await page.text_content("h2") == "Page not found"
    finally:
        await page.close()
    api = await client.get("/api/no-such-thing", headers={"Accept": "application/json"})
    assert api.status == 404 and (await api.json())["error"] == "not_found"
    icon = await client.get("/favicon.ico")
    assert icon.status == 200 and icon.headers["Content-Type"] == "image/svg+xml"


async def test_a_signed_in_owner_hosts_from_the_home_page_with_one_name(client, browser, db, room_factory):
    """The session cookie is the identity of both sockets: the owner is Host in the people list and in chat,
    under the account's name.  The browser signs in through the pages and names itself on the
    account page; no session is handed to it."""
    from test_auth import new_email
    from test_auth_browser import sign_in_page

    address = new_email()
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = await context.new_page()
        await sign_in_page(page, client, address)
        await page.fill("#display-name", "Ada Owner")
        await page.click("#name-form button")
        await page.wait_for_selector("#name-status:has-text('Saved')", timeout=15000)
        account = {"id": await db.fetchval("SELECT id FROM accounts WHERE email = $1", address)}
        room = await room_factory(title="Ada's room", owner_id=account["id"], policy="signed-in")
        await page.goto(str(client.make_url("/")))
        await page.click(f"#mine li[data-room='{room.slug}'] a:text-is('Host')")
        await page.wait_for_url(f"**/rooms/{room.slug}/host")
        await page.wait_for_selector("body[data-ready='1']", timeout=15000)
        await page.wait_for_selector("section#chat[data-role='host']", timeout=10000)
        await page.fill(".chat-input", "hosting from my account")
        await page.press(".chat-input", "Enter")
        await page.wait_for_selector(".chat-list li .badge-host", timeout=10000)
        assert await page.text_content(".chat-list li .chat-name") == "Ada Owner"
        assert await page.is_enabled("#golive")
        # Asked with the browser's own session (the room admits only the signed-in).
        snapshot = await (await context.request.get(str(client.make_url(f"/api/rooms/{room.slug}/participants")),
                                                    headers={"Accept": "application/json"})).json()
        assert [(p["name"], p["role"], p["subject"]) for p in snapshot["participants"]] == [
            ("Ada Owner", "host", f"a:{account['id']}")]
    finally:
        await context.close()
