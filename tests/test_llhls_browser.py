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
        await page.wait_for_function(
            "() => { const v = document.getElementById('hls-video'); return v && v.currentTime > 1.0; }",
            timeout=60000)
        state = await page.evaluate("""() => {
            const v = document.getElementById('hls-video');
            return {player: window.odsViewer.hlsPlayer, width: v.videoWidth, error: v.error && v.error.code,
                    src: window.odsViewer.hls && window.odsViewer.hls.url,
                    lowLatency: window.odsViewer.hls && window.odsViewer.hls.config.lowLatencyMode};
        }""")
        assert state["player"] == "hls.js" and state["lowLatency"] is True and not state["error"]
        assert state["width"] > 0 and state["src"].endswith("/live.m3u8")
        assert "low-latency" in await page.text_content("#status")
        # No WebRTC transport was made for this viewer.
        assert await page.evaluate("() => window.odsViewer.transports.size") == 0
    finally:
        await page.close()
