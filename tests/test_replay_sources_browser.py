"""Headless Chromium replays a live-coding episode as it looked live: screen large, camera PiP, chat in step."""

from __future__ import annotations

import asyncio
import os

import pytest

from conftest import make_config
from odsmedia.app import make_app
from recorder import episodes
from recorder.recorder import RECORDER
from testsupport.synthetic import SyntheticSession, read_segment, record_sources

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


# The pictures read back in the page: each synthetic frame draws its index as 18 white/black
# 16-pixel columns (testsupport/counter.py); the shipped page's <video>s, by id, are drawn to a canvas.
READ_COUNTERS = """(ids) => ids.map((id) => {
    const video = document.getElementById(id);
    const c = document.createElement("canvas");
    c.width = video.videoWidth; c.height = video.videoHeight;
    const g = c.getContext("2d");
    g.drawImage(video, 0, 0);
    const row = g.getImageData(0, Math.floor(c.height / 2), 18 * 16, 1).data;
    let n = 0;
    for (let bit = 0; bit < 18; bit++) n = n * 2 + (row[(bit * 16 + 8) * 4] > 128 ? 1 : 0);
    return {n, paused: video.paused, t: video.currentTime, frames: video.getVideoPlaybackQuality().totalVideoFrames};
})"""


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
            main, pip = await page.evaluate(READ_COUNTERS, ["video", "pip-video"])
            if not main["paused"] and not pip["paused"]:
                samples.append({"main": main["n"], "pip": pip["n"], "mainTime": main["t"], "pipTime": pip["t"],
                                "mainFrames": main["frames"], "pipFrames": pip["frames"]})
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


async def test_chromium_host_screen_and_camera_are_recorded_as_two_renditions(
        app_client, room_factory, token_factory, browser):
    """The shipped host page publishes camera + microphone and shares a (fake) screen; the
    episode holds a screen rendition and a camera rendition, each decodable with its audio,
    and the replay page plays the screen large with the camera in the PiP."""
    room = await room_factory(title="Browser live coding")
    token = await token_factory(room, "host")
    recorder = app_client.app[RECORDER]
    context = await browser.new_context()
    try:
        host = await context.new_page()
        await host.goto(str(app_client.make_url(f"/rooms/{room.slug}/host?token={token}")))
        await host.wait_for_selector("body[data-ready='1']", timeout=15000)
        await host.click("#golive")
        await host.wait_for_selector("body[data-connection='connected']", timeout=30000)
        await host.click("#share-screen")
        await host.wait_for_selector("body[data-screen='1']", timeout=15000)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            recording = recorder.recordings.get(room.slug)
            if recording is not None and len(recording.renditions) == 2 and all(
                    len(r.playlist.entries) >= 2 for r in recording.renditions):
                break
            assert loop.time() < deadline, "the screen and camera were not both recorded"
            await asyncio.sleep(0.2)
        await host.click("#stop")
        await asyncio.wait_for(recording.done.wait(), 30)
    finally:
        await context.close()
    assert recording.status == "ready"
    renditions = {r.source: r for r in await episodes.renditions(recorder.db, recording.episode_id)}
    assert set(renditions) == {"camera", "screen"}
    for source, rendition in renditions.items():
        assert rendition.video_codec.startswith("avc1.") and rendition.audio_codec == "opus", rendition
        rows = await episodes.segments(recorder.db, recording.episode_id, rendition.rendition)
        for r in rows:
            init = recorder.storage.read(f"{recording.storage_key}/{r.init_name}")
            decoded = read_segment(init, recorder.storage.read(f"{recording.storage_key}/{r.name}"))
            assert decoded.video_pts and decoded.audio_pts, (source, r.name)

    page = await browser.new_page()
    try:
        await page.goto(str(app_client.make_url(f"/episodes/{recording.episode_id}/watch")))
        await page.wait_for_selector("#main-figure.screen:not(.pip)")
        await page.wait_for_function(
            "() => document.getElementById('video').currentTime > 1 && document.getElementById('pip-video').currentTime > 0.5",
            timeout=30000)
        state = await page.evaluate("""() => ({
            main: document.getElementById('video').videoWidth, pip: document.getElementById('pip-video').videoWidth})""")
        # The rendition lists its largest picture (the browser's encoder raises the camera's size
        # as its bandwidth estimate grows: a new period in the same rendition).
        assert state["main"] == renditions["screen"].width and 0 < state["pip"] <= renditions["camera"].width
    finally:
        await page.close()


async def test_a_screen_shared_late_leaves_the_whole_episode_in_reach(app_client, room_factory, browser):
    # Camera from 0, screen from 4 s: the camera drives the page (its player spans the whole
    # episode), the screen is the picture-in-picture, hidden until its moment.
    room = await room_factory(title="Late share")
    recording = app_client.app[RECORDER].recording_for(room.id, room.slug, room.title)
    await record_sources(recording, {
        "camera": SyntheticSession(8.0, width=320, height=180, gop_seconds=1.0, seed=1),
        "screen": SyntheticSession(4.0, audio=False, width=640, height=360, gop_seconds=1.0,
                                   first_index=1000, seed=2, arrival0=1004.0)})
    assert recording.status == "ready"
    page = await browser.new_page()
    try:
        await page.goto(str(app_client.make_url(f"/episodes/{recording.episode_id}/watch")))
        await page.wait_for_selector("#main-figure.camera[data-source='camera']:not(.pip)")
        await page.wait_for_selector("#pip-figure.pip[data-source='screen'][data-absent='1']", state="attached")
        assert await page.is_hidden("#pip-figure")               # nothing shared yet
        assert await page.text_content("#pip-figure figcaption") == "Screen"
        assert await page.get_attribute("#chat", "data-video-offset") == "0"
        await page.wait_for_function("() => document.getElementById('video').duration > 7.5", timeout=30000)
        # Past the share's start the screen shows, on the episode's clock.
        await page.evaluate("() => { document.getElementById('video').currentTime = 5.0; }")
        await page.wait_for_selector("#pip-figure[data-absent='0']", timeout=30000)
        await page.wait_for_function(
            "() => Math.abs(document.getElementById('pip-video').currentTime"
            " - (document.getElementById('video').currentTime - 4.0)) < 0.3", timeout=30000)
    finally:
        await page.close()




COHOST_AFTER = 1.0      # the co-host's camera joined this long after the host's


async def test_a_cohosts_camera_is_a_second_picture_in_picture_in_step(app_client, room_factory, browser):
    # The host's camera and screen, and a co-host's camera: the recorder keeps three renditions
    # (camera, screen, camera-2); the replay shows the screen large and both cameras as PiPs,
    # stacked, each showing its own source's frames on the episode's clock.
    room = await room_factory(title="Pairing session")
    recording = app_client.app[RECORDER].recording_for(room.id, room.slug, room.title)
    await record_sources(recording, {
        "camera": SyntheticSession(12.0, width=320, height=180, gop_seconds=1.0, seed=1),
        "screen": SyntheticSession(12.0 - SCREEN_AFTER, audio=False, width=640, height=360, gop_seconds=1.0,
                                   first_index=1000, seed=2, arrival0=1000.0 + SCREEN_AFTER),
        "camera@cohost": SyntheticSession(12.0 - COHOST_AFTER, audio=False, width=320, height=180, gop_seconds=1.0,
                                          first_index=2000, seed=3, arrival0=1000.0 + COHOST_AFTER)})
    assert recording.status == "ready"
    offsets = {r["name"]: r["offset"] for r in
               (await (await app_client.get(f"/episodes/{recording.episode_id}")).json())["renditions"]}
    assert offsets["camera-2"] == pytest.approx(COHOST_AFTER, abs=0.02)
    page = await browser.new_page()
    try:
        await page.goto(str(app_client.make_url(f"/episodes/{recording.episode_id}/watch")))
        await page.wait_for_selector("#main-figure.screen[data-source='screen']:not(.pip)")
        await page.wait_for_selector("#pip-figure.pip[data-rendition='camera']")
        await page.wait_for_selector("#pip-figure-2.pip[data-rendition='camera-2']")
        assert await page.text_content("#pip-figure-2 figcaption") == "Camera 2"
        await page.wait_for_function(
            "() => ['video', 'pip-video', 'pip-video-2'].every((id) => document.getElementById(id).currentTime > 1)",
            timeout=30000)
        # A PiP that starts behind the main player's clock catches up (5% faster, docs/recording.md):
        # sample once both follow it within 40 ms.
        await page.wait_for_function(
            """([a, b]) => { const t = document.getElementById('video').currentTime;
                 return Math.abs(document.getElementById('pip-video').currentTime - (t + a)) < 0.04
                     && Math.abs(document.getElementById('pip-video-2').currentTime - (t + b)) < 0.04; }""",
            arg=[offsets["screen"] - offsets["camera"], offsets["screen"] - offsets["camera-2"]], timeout=30000)
        # Stacked up the right edge, the second above the first, not over it.
        first, second = await page.locator("#pip-figure").bounding_box(), await page.locator("#pip-figure-2").bounding_box()
        assert second["y"] + second["height"] <= first["y"] + 1 and abs(second["x"] - first["x"]) < 2, (first, second)

        # In step: at episode time T the screen shows 1000 + 30 (T - 0.5), the co-host's camera
        # 2000 + 30 (T - 1.0): the co-host's counter is the screen's, 1000 on and 15 frames back
        # (bounds as in the two-source test above).
        samples = []
        for _ in range(8):
            main, camera, cohost = await page.evaluate(READ_COUNTERS, ["video", "pip-video", "pip-video-2"])
            if not (main["paused"] or camera["paused"] or cohost["paused"]):
                samples.append((main["n"], camera["n"], cohost["n"]))
            await page.wait_for_timeout(200)       # spread the samples over playback (not a sync wait)
        assert len(samples) >= 6, samples
        assert all(1000 <= m < 2000 and c < 1000 and 2000 <= k < 3000 for m, c, k in samples), samples
        skews = [(k - 2000) - (m - 1000 - 15) for m, _, k in samples]
        assert sorted(map(abs, skews))[len(skews) // 2] <= 2, (skews, samples)
        assert max(map(abs, skews)) <= 6, (skews, samples)

        # "Hide" hides every picture-in-picture; "Swap" exchanges the screen with the first.
        await page.click("#hide-pip")
        assert await page.is_hidden("#pip-figure") and await page.is_hidden("#pip-figure-2")
        await page.click("#hide-pip")
        await page.click("#swap")
        await page.wait_for_selector("#main-figure.pip")
        await page.wait_for_selector("#pip-figure:not(.pip)")
        await page.wait_for_selector("#pip-figure-2.pip")
        if os.environ.get("ODS_TEST_SCREENSHOTS"):
            await page.screenshot(path=os.path.join(os.environ["ODS_TEST_SCREENSHOTS"], "replay-cohost.png"))
            await page.click("#swap")                  # back to the screen large, on a phone
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.screenshot(path=os.path.join(os.environ["ODS_TEST_SCREENSHOTS"], "replay-cohost-phone.png"))
    finally:
        await page.close()
