"""Headless Chromium: the host page goes live with the fake camera, the viewer page plays it."""

from __future__ import annotations

import asyncio
import time

import pytest

from odsmedia.rooms.sfu import SFU

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


async def test_host_page_to_viewer_page(client, room_factory, token_factory, browser):
    room = await room_factory(title="Browser room")
    token = await token_factory(room, "host")
    errors: list[str] = []
    host_ctx = await browser.new_context()
    viewer_ctx = await browser.new_context()
    try:
        host = await host_ctx.new_page()
        host.on("pageerror", lambda exc: errors.append(f"host: {exc}"))
        await host.goto(str(client.make_url(f"/rooms/{room.slug}/host?token={token}")))
        await host.wait_for_selector("body[data-ready='1']", timeout=10000)
        assert await host.get_attribute("#chat", "data-room") == room.slug
        await host.click("#golive")
        await host.wait_for_selector("body[data-connection='connected']", timeout=20000)

        viewer = await viewer_ctx.new_page()
        viewer.on("pageerror", lambda exc: errors.append(f"viewer: {exc}"))
        await viewer.goto(str(client.make_url(f"/rooms/{room.slug}?name=Watcher")))
        await viewer.wait_for_selector("body[data-ready='1']", timeout=10000)
        assert await viewer.text_content("#room-title") == "Browser room"
        decoded = 0
        deadline = time.monotonic() + 30
        while decoded == 0 and time.monotonic() < deadline:
            decoded = await viewer.evaluate("window.odsViewer.framesDecoded()")
            await asyncio.sleep(0.25)
        assert decoded > 0, "the viewer page decoded no video frames"

        live = client.server.app[SFU].get(room.slug)
        codecs = {p.kind: p.codec_name for p in live.publications.values()}
        assert codecs == {"video": "H264", "audio": "opus"}
        # The host sees who watches.
        await host.wait_for_function("document.getElementById('viewer-count').textContent === '1'", timeout=5000)
        assert "Watcher" in await host.text_content("#people")

        # Stop: the viewer page learns that nobody is live.
        await host.click("#stop")
        await viewer.wait_for_selector("#offline:not([hidden])", timeout=10000)
        assert not errors, errors
    finally:
        await host_ctx.close()
        await viewer_ctx.close()


async def test_viewer_page_shows_gate_refusal(client, room_factory, browser):
    room = await room_factory(policy="signed-in")
    page = await browser.new_page()
    try:
        await page.goto(str(client.make_url(f"/rooms/{room.slug}")))
        box = await page.wait_for_selector("#refusal:not([hidden])", timeout=10000)
        assert await box.get_attribute("data-status") == "401"
        assert "Sign in" in await box.text_content()
        assert await page.get_attribute("#refusal a", "href") == f"/signin?next=%2Frooms%2F{room.slug}"
    finally:
        await page.close()
