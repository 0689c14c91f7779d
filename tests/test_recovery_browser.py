"""The shipped pages survive a dead network path: the viewer page resubscribes,
the host page publishes again, and the viewer keeps decoding frames."""

from __future__ import annotations

import asyncio
import time

import pytest

from odsmedia.rooms.sfu import SFU
from testsupport.pages import frames_grow, go_live
from testsupport.peers import cut_off

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]


def _transports(client, slug, role):
    live = client.server.app[SFU].get(slug)
    return [t for p in live.participants.values() for t in p.transports.values() if t.role == role and not t.closed]


async def _until(page, expression: str, within: float) -> None:
    deadline = time.monotonic() + within
    while not await page.evaluate(expression):
        assert time.monotonic() < deadline, f"not reached: {expression}"
        await asyncio.sleep(0.1)


async def test_pages_reconnect_when_their_path_dies(client, room_factory, token_factory, browser):
    room = await room_factory()
    token = await token_factory(room, "host")
    errors: list[str] = []
    host_ctx, viewer_ctx = await browser.new_context(), await browser.new_context()
    try:
        host = await host_ctx.new_page()
        host.on("pageerror", lambda exc: errors.append(f"host: {exc}"))
        await go_live(host, str(client.make_url(f"/rooms/{room.slug}/host?token={token}")), ready_ms=10000,
                      connected_ms=20000)
        viewer = await viewer_ctx.new_page()
        viewer.on("pageerror", lambda exc: errors.append(f"viewer: {exc}"))
        await viewer.goto(str(client.make_url(f"/rooms/{room.slug}?name=Mover")))
        await viewer.wait_for_selector("body[data-ready='1']", timeout=10000)
        assert await frames_grow(viewer, 10, 30) >= 10

        # The viewer's path dies: the page sees ICE disconnected and subscribes again.
        [old] = _transports(client, room.slug, "subscribe")
        cut_off(old.pc)
        await _until(viewer, "window.odsViewer.recoveries === 1", 20)
        deadline = time.monotonic() + 20
        while not any(t.id != old.id and t.connected.is_set() for t in _transports(client, room.slug, "subscribe")) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert [t.id for t in _transports(client, room.slug, "subscribe")] != [old.id]
        assert old.closed  # released by the page's unsubscribe
        assert await frames_grow(viewer, 10, 20) >= 10

        # The host's path dies: the host page publishes again, the viewer follows.
        [publisher] = _transports(client, room.slug, "publish")
        cut_off(publisher.pc)
        await _until(host, "window.odsHost.recoveries === 1", 20)
        await host.wait_for_selector("body[data-connection='connected']", timeout=20000)
        deadline = time.monotonic() + 20
        while not any(t.id != publisher.id and t.connected.is_set()
                      for t in _transports(client, room.slug, "publish")) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert publisher.closed
        assert await frames_grow(viewer, 10, 30) >= 10
        assert not errors, errors
    finally:
        await host_ctx.close()
        await viewer_ctx.close()
