"""Headless Chromium replays a live-coding episode as it looked live: screen large, camera PiP, chat in step."""

from __future__ import annotations

import asyncio

import pytest

from conftest import make_config
from odsmedia.app import make_app
from recorder.recorder import RECORDER
from testsupport.synthetic import SyntheticSession, record_sources

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

SCREEN_AFTER = 0.5      # the screen share began this long after the camera
CHAT_AT = 4.0           # episode offset of the seeded chat message


@pytest.fixture
async def app_client(aiohttp_client, service_urls, tmp_path):
    config = make_config(service_urls, tmp_path / "data", ODS_RECORDING_SEGMENT_SECONDS="2",
                         ODS_RECORDING_RECONNECT_GRACE="0")
    return await aiohttp_client(make_app(config))


async def record_session(app, room, seconds: float) -> int:
    """Camera + microphone from 0, screen from SCREEN_AFTER: one publisher's live-coding session."""
    recording = app[RECORDER].recording_for(room.id, room.slug, room.title)
    await record_sources(recording, {
        "camera": SyntheticSession(seconds, width=320, height=180, gop_seconds=1.0, seed=1),
        "screen": SyntheticSession(seconds - SCREEN_AFTER, audio=False, width=640, height=360, gop_seconds=1.0,
                                   first_index=1000, seed=2, arrival0=1000.0 + SCREEN_AFTER)})
    assert recording.status == "ready"
    return recording.episode_id


async def seed_chat(db, room, episode_id: int) -> None:
    """A message posted CHAT_AT s into the session (what live posting stores: its episode offset)."""
    await db.execute(
        "INSERT INTO chat_items (room_id, id, changed_seq, kind, author, author_name, body, episode_id, "
        "episode_offset) VALUES ($1, 1, 1, 'message', 'v:x', 'Ada', 'look at line 42', $2, $3)",
        room.id, episode_id, CHAT_AT)
    await db.execute("INSERT INTO chat_rooms (room_id, last_seq) VALUES ($1, 1)", room.id)


# Both pictures read back in the page: each synthetic frame draws its index as 18 white/black
# 16-pixel columns (testsupport/counter.py); the shipped page's two <video>s are drawn to a canvas.
READ_BOTH = """() => {
    const read = (video) => {
        const c = document.createElement("canvas");
        c.width = video.videoWidth; c.height = video.videoHeight;
        const g = c.getContext("2d");
        g.drawImage(video, 0, 0);
        const row = g.getImageData(0, Math.floor(c.height / 2), 18 * 16, 1).data;
        let n = 0;
        for (let bit = 0; bit < 18; bit++) n = n * 2 + (row[(bit * 16 + 8) * 4] > 128 ? 1 : 0);
        return n;
    };
    const main = document.getElementById("video"), pip = document.getElementById("pip-video");
    return {main: read(main), pip: read(pip), mainTime: main.currentTime, pipTime: pip.currentTime,
            mainPaused: main.paused, pipPaused: pip.paused, mainFrames: main.getVideoPlaybackQuality().totalVideoFrames,
            pipFrames: pip.getVideoPlaybackQuality().totalVideoFrames};
}"""


async def test_replay_shows_screen_with_camera_pip_in_sync_with_chat(app_client, room_factory, db, browser):
    room = await room_factory(title="Live coding")
    episode_id = await record_session(app_client.app, room, 9.0)
    await seed_chat(db, room, episode_id)
    base = str(app_client.make_url("/")).rstrip("/")
    page = await browser.new_page()
    try:
        await page.goto(f"{base}/episodes/{episode_id}/watch")
        # The live layout: the screen is the large figure, the camera the picture-in-picture.
        await page.wait_for_selector("#videos.has-screen #main-figure.screen[data-source='screen']:not(.pip)")
        await page.wait_for_selector("#pip-figure.pip[data-source='camera']")
        # Episode time (chat) = the main player's time + where the screen starts (the API's offset).
        shift = float(await page.get_attribute("#chat", "data-video-offset"))
        assert shift == pytest.approx(SCREEN_AFTER, abs=0.01)
        await page.wait_for_function(
            "() => document.getElementById('video').currentTime > 1 && document.getElementById('pip-video').currentTime > 1",
            timeout=30000)

        # In sync: camera frame j was captured with screen frame i when j = i + 15 (the screen
        # came 0.5 s = 15 frames later).  The page keeps the PiP's clock within 40 ms of the main
        # one (a 5% rate nudge; a seek past 250 ms), so the pictures shown agree to about a frame:
        # the median is bounded at 2 frames (67 ms).  Each <video> presents its frames on its own,
        # and on a loaded machine one may hold a picture a few frames longer: a single sample may
        # be off by up to 6 frames (200 ms), still far below what a viewer would notice as the
        # camera drifting from the screen.  Measured on an idle run: 0-2 frames.
        samples = []
        for _ in range(8):
            state = await page.evaluate(READ_BOTH)
            if not state["mainPaused"] and not state["pipPaused"]:
                samples.append(state)
            await page.wait_for_timeout(200)       # spread the samples over playback (not a sync wait)
        assert len(samples) >= 6, samples
        skews = [(s["pip"] - (s["main"] - 1000)) - 15 for s in samples]
        assert all(s["main"] >= 1000 and s["pip"] < 1000 for s in samples), samples
        assert sorted(map(abs, skews))[len(skews) // 2] <= 2, (skews, samples)
        assert max(map(abs, skews)) <= 6, (skews, samples)
        clock_skews = [s["pipTime"] - (s["mainTime"] + shift) for s in samples]
        assert max(map(abs, clock_skews)) <= 0.1, clock_skews
        assert samples[-1]["mainFrames"] > 30 and samples[-1]["pipFrames"] > 30     # both decode pictures

        # The chat replay shows the message at its moment: episode time CHAT_AT, which is
        # main time CHAT_AT - SCREEN_AFTER (timeupdate fires every ~250 ms).
        shown_at = await page.wait_for_function(
            """() => document.querySelector('#chat .chat-list') && document.querySelector('#chat').dataset.shown === '1'
                     ? document.getElementById('video').currentTime : null""", timeout=30000)
        shown_at = await shown_at.json_value()
        assert CHAT_AT - shift <= shown_at <= CHAT_AT - shift + 0.6
        assert "look at line 42" in await page.text_content("#chat .chat-list")

        # Hide, show and swap, as on the live viewer.
        await page.click("#hide-pip")
        assert await page.is_hidden("#pip-figure")
        await page.click("#hide-pip")
        await page.click("#swap")
        await page.wait_for_selector("#main-figure.pip")
        await page.wait_for_selector("#pip-figure:not(.pip)")
    finally:
        await page.close()
