"""The shipped viewer page in a gated room falls back to LL-HLS with signed URL tokens."""

from __future__ import annotations

import pytest

from conftest import make_config
from odsmedia.app import make_app
from recorder.routes import HLS_ORIGIN

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]


async def test_gated_room_viewer_plays_ll_hls_with_url_tokens(aiohttp_client, service_urls, tmp_path, peers,
                                                              room_factory, token_factory, browser):
    config = make_config(service_urls, tmp_path / "data", ODS_MEDIA_MAX_WEBRTC_VIEWERS_PER_ROOM="0",
                         ODS_RECORDING_SEGMENT_SECONDS="2", ODS_RECORDING_PART_SECONDS="0.5")
    client = await aiohttp_client(make_app(config))
    room = await room_factory(policy="signed-in")
    publisher = await peers.host(client, room)
    await publisher.publish(fps=15)
    viewer_token = await token_factory(room, "viewer")
    page = await browser.new_page()
    try:
        # An operator-minted viewer link: no account, no cookie that admits anything.
        await page.goto(str(client.make_url(f"/rooms/{room.slug}?token={viewer_token}&name=Watcher")))
        await page.wait_for_function("() => document.getElementById('mode').textContent === 'low-latency'",
                                     timeout=30000)
        await page.wait_for_function(
            "() => { const v = document.getElementById('hls-video'); return v && v.currentTime > 1.0; }",
            timeout=60000)
        # hls.js follows with blocking reloads (_HLS_msn/_HLS_part) once it has the first playlist.
        await page.wait_for_function(
            "() => performance.getEntriesByType('resource').some((e) => e.name.includes('_HLS_msn='))",
            timeout=30000)
        state = await page.evaluate("""() => ({
            src: window.odsViewer.hls.url, token: window.odsViewer.hlsToken,
            media: performance.getEntriesByType('resource').map((e) => e.name)
                   .filter((n) => /\\/episodes\\/[0-9]+\\//.test(n)),
        })""")
        token = state["token"]
        assert token and state["src"].endswith(f"/live.m3u8?token={token}")
        # Every playlist, part and init request carried the URL token (a CDN could serve them).
        parts = [n for n in state["media"] if ".m4s" in n]
        assert parts and all(f"token={token}" in n for n in state["media"]), state["media"][:5]
        # The token is the server's, for this episode.
        episode_id = int(state["src"].split("/episodes/")[1].split("/")[0])
        assert client.app[HLS_ORIGIN].tokens.verify(token, episode_id).episode_id == episode_id
    finally:
        await page.close()
