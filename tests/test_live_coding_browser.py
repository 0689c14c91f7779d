"""Live coding on the shipped pages: the host publishes camera, microphone and a
screen from host.html; viewers (one already watching, one joining late) decode
both videos; the screen is switched and stopped mid-session while the camera
stays live; a WHEP client (aiortc) receives screen, camera and audio.

Headless Chromium's fake devices give the camera and microphone, and with
--use-fake-ui-for-media-stream getDisplayMedia picks a fake 1920x1080 screen.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiortc import MediaStreamTrack, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from yarl import URL

from test_studio_browser import server, until  # noqa: F401  (the fixture: `odsmedia serve` with a room)
from testsupport.peers import peer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


async def frames_by_source(page, sources: tuple[str, ...], *, above: dict | None = None, timeout: float = 30.0) -> dict:
    """Poll the viewer's per-source decoded frames until every source is past `above` (default 0)."""
    above = above or {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frames = await page.evaluate("window.odsViewer.framesBySource()")
        if all(frames.get(s, 0) > above.get(s, 0) for s in sources) or loop.time() > deadline:
            return frames
        await asyncio.sleep(0.2)


async def open_viewer(context, server):
    page = await context.new_page()
    await page.goto(f"{server.base}/rooms/{server.slug}")
    await page.wait_for_selector("body[data-ready='1']", timeout=15000)
    return page


async def whep_receives(server) -> dict[str, int]:
    """An aiortc WHEP player offering two video and one audio m-line: frames received per track."""
    viewer = peer()
    counts: dict[str, int] = {}
    tasks = []
    for kind in ("video", "video", "audio"):
        viewer.addTransceiver(kind, direction="recvonly")

    @viewer.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        key = f"{track.kind}:{track.id}"
        counts[key] = 0

        async def consume() -> None:
            try:
                while True:
                    await track.recv()
                    counts[key] += 1
            except MediaStreamError:
                pass
        tasks.append(asyncio.ensure_future(consume()))

    try:
        await viewer.setLocalDescription(await viewer.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.base}/rooms/{server.slug}/whep", data=viewer.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp"}) as resp:
                assert resp.status == 201, await resp.text()
                answer = await resp.text()
                location = resp.url.join(URL(resp.headers["Location"]))    # absolute on a worker's own URL
            await viewer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (len(counts) == 3 and all(n >= 5 for n in counts.values())):
                await asyncio.sleep(0.1)
            async with http.delete(location) as resp:
                assert resp.status == 200
        return counts
    finally:
        for task in tasks:
            task.cancel()
        await viewer.close()


async def test_host_shares_screen_camera_and_voice_and_every_viewer_plays_both_videos(server, browser):  # noqa: F811
    host_token = server.token("host")
    errors: list[str] = []
    host_ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    viewer_ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        host = await host_ctx.new_page()
        host.on("pageerror", lambda exc: errors.append(f"host: {exc}"))
        await host.goto(f"{server.base}/rooms/{server.slug}/host?token={host_token}")
        await host.wait_for_selector("body[data-ready='1']", timeout=15000)
        assert await host.is_visible("#share-screen") and await host.is_hidden("#no-screen-share")
        assert await host.is_disabled("#share-screen")           # sharing starts once live
        await host.click("#golive")
        await host.wait_for_selector("body[data-connection='connected']", timeout=30000)

        early = await open_viewer(viewer_ctx, server)
        early.on("pageerror", lambda exc: errors.append(f"early viewer: {exc}"))
        assert (await frames_by_source(early, ("camera",))).get("camera", 0) > 0

        # Share the screen during the broadcast: a second publication, the camera stays live.
        await host.click("#share-screen")
        await host.wait_for_selector("body[data-screen='1']", timeout=15000)
        await until(host, "window.odsHost.screen.pc && window.odsHost.screen.pc.connectionState === 'connected'", 30)
        assert await host.evaluate("window.odsHost.streams.get('screen').getVideoTracks()[0].contentHint") == "detail"
        sources = await host.evaluate("window.odsHost.screen.publications.map(p => p.source).sort()")
        assert sources == ["screen", "screen-audio"]
        params = await host.evaluate("window.odsHost.screen.senders.find(s => s.track.kind === 'video')"
                                     ".getParameters().encodings[0].maxBitrate")
        assert params == 3000000
        frames = await frames_by_source(early, ("camera", "screen"))
        assert frames.get("camera", 0) > 0 and frames.get("screen", 0) > 0, frames

        # The layout: the screen on the stage, the camera as a picture-in-picture.
        await early.wait_for_selector("#videos.has-screen figure.screen:not(.pip)", timeout=10000)
        await early.wait_for_selector("#videos figure[data-participant].pip", timeout=10000)
        assert await early.is_visible("#layout-controls")

        # A viewer who joins now gets every source in one transport and decodes both videos.
        late = await open_viewer(viewer_ctx, server)
        late.on("pageerror", lambda exc: errors.append(f"late viewer: {exc}"))
        frames = await frames_by_source(late, ("camera", "screen"))
        assert frames.get("camera", 0) > 0 and frames.get("screen", 0) > 0, f"late joiner: {frames}"
        assert await late.evaluate("[...window.odsViewer.transports.values()].length") == 1
        await late.screenshot(path=str(server.log_path.parent / "viewer-live-coding.png"))
        await host.screenshot(path=str(server.log_path.parent / "host-live-coding.png"))

        # Swap and hide work on the late viewer's page.
        await late.click("#swap")
        await late.wait_for_selector("#videos figure.screen.pip", timeout=15000)
        await late.click("#hide-pip")
        assert await late.is_hidden("#videos figure.screen")
        await late.click("#hide-pip")
        await late.click("#swap")
        await late.wait_for_selector("#videos figure.screen:not(.pip)", timeout=15000)

        # A WHEP player gets the screen, the camera and audio.
        counts = await whep_receives(server)
        assert sorted(k.split(":")[0] for k in counts) == ["audio", "video", "video"], counts
        assert all(n >= 5 for n in counts.values()), counts

        # Switch the shared screen mid-session: the same publication, the viewers keep playing.
        before = await frames_by_source(late, ("camera", "screen"))
        pubs_before = await host.evaluate("window.odsHost.screen.publications.map(p => p.id).sort()")
        await host.click("#switch-screen")
        await until(host, "document.getElementById('status').textContent.includes('new screen')", 15)
        assert await host.evaluate("window.odsHost.screen.publications.map(p => p.id).sort()") == pubs_before
        after = await frames_by_source(late, ("camera", "screen"), above=before)
        assert after["screen"] > before["screen"] and after["camera"] > before["camera"], (before, after)

        # Stop sharing: the screen leaves the viewers' stage, the camera fills it and keeps playing.
        await host.click("#stop-screen")
        await host.wait_for_selector("body[data-screen='0']", timeout=10000)
        assert await host.is_visible("#live-badge")
        for page in (early, late):
            await page.wait_for_selector("#videos:not(.has-screen) figure[data-participant]:not(.pip)", timeout=10000)
            assert await page.locator("#videos figure.screen").count() == 0
        before = await frames_by_source(late, ("camera",))
        after = await frames_by_source(late, ("camera",), above=before)
        assert after["camera"] > before["camera"]
        assert errors == []
    finally:
        await viewer_ctx.close()
        await host_ctx.close()


async def test_a_browser_without_screen_capture_hides_the_share_button(server, browser):  # noqa: F811
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        page = await context.new_page()
        # What a phone's browser lacks: getDisplayMedia.
        await page.add_init_script("delete MediaDevices.prototype.getDisplayMedia")
        await page.goto(f"{server.base}/rooms/{server.slug}/host?token={server.token('host')}")
        await page.wait_for_selector("body[data-ready='1']", timeout=15000)
        assert await page.is_hidden("#share-screen")
        assert "cannot share a screen" in await page.text_content("#no-screen-share")
        assert await page.is_visible("#no-screen-share")
    finally:
        await context.close()
