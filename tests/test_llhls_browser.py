"""The shipped viewer page falls back to LL-HLS (hls.js, lowLatencyMode) when WebRTC is full."""

from __future__ import annotations

import pytest

from conftest import make_config
from odsmedia.app import make_app

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]


async def test_viewer_page_plays_ll_hls_when_the_webrtc_cap_is_zero(aiohttp_client, service_urls, tmp_path,
                                                                     peers, room_factory, browser):
    config = make_config(service_urls, tmp_path / "data", ODS_MEDIA_MAX_WEBRTC_VIEWERS_PER_ROOM="0",
                         ODS_RECORDING_SEGMENT_SECONDS="2", ODS_RECORDING_PART_SECONDS="0.5")
    client = await aiohttp_client(make_app(config))
    room = await room_factory()
    publisher = await peers.host(client, room)
    await publisher.publish(fps=15)
    page = await browser.new_page()
    try:
        await page.goto(str(client.make_url(f"/rooms/{room.slug}?name=Watcher")))
        # The page says which mode it is in.
        await page.wait_for_function("() => document.getElementById('mode').textContent === 'low-latency'",
                                     timeout=30000)
        state = await hls_playing(page)
        assert state["player"] == "hls.js" and state["lowLatency"] is True and not state["error"]
        assert state["width"] > 0 and state["src"].endswith("/live.m3u8")
        # No WebRTC transport was made for this viewer.
        assert await page.evaluate("() => window.odsViewer.transports.size") == 0
    finally:
        await page.close()


async def test_a_viewer_in_low_latency_mode_before_the_host_goes_live_plays_once_it_is(
        aiohttp_client, service_urls, tmp_path, peers, room_factory, browser):
    # The viewer chooses low-latency mode while nothing is live: the page says so and keeps
    # looking (a growing pause, at most 10 s), then plays once the host's recording is live.
    config = make_config(service_urls, tmp_path / "data", ODS_RECORDING_SEGMENT_SECONDS="2",
                         ODS_RECORDING_PART_SECONDS="0.5")
    client = await aiohttp_client(make_app(config))
    room = await room_factory()
    page = await browser.new_page()
    try:
        await page.goto(str(client.make_url(f"/rooms/{room.slug}?name=Early")))
        await page.click("#switch-mode")
        await page.wait_for_function(
            "() => document.getElementById('status').textContent.includes('not available yet')", timeout=15000)
        assert await page.text_content("#mode") == "low-latency"
        assert "Trying again in" in await page.text_content("#status")
        publisher = await peers.host(client, room)
        await publisher.publish(fps=15)
        state = await hls_playing(page)
        assert state["player"] == "hls.js" and state["width"] > 0 and not state["error"]
        assert state["attempts"] == 0                    # reset by playback
        assert await page.text_content("#status") == "Watching in low-latency mode (a few seconds behind)."
        assert await page.evaluate("() => window.odsViewer.transports.size") == 0
    finally:
        await page.close()


async def hls_playing(page) -> dict:
    """Waits until the page's HLS picture has played a second and the page says it is watching;
    returns what the player holds."""
    await page.wait_for_function(
        "() => { const v = document.getElementById('hls-video'); return v && v.currentTime > 1.0; }",
        timeout=60000)
    await page.wait_for_function(
        "() => document.getElementById('status').textContent.startsWith('Watching in low-latency mode')",
        timeout=30000)
    return await page.evaluate("""() => {
        const v = document.getElementById('hls-video'), hls = window.odsViewer.hls;
        return {player: window.odsViewer.hlsPlayer, width: v.videoWidth, error: v.error && v.error.code,
                src: hls && hls.url, lowLatency: hls && hls.config.lowLatencyMode,
                attempts: window.odsViewer.hlsAttempts};
    }""")
