"""Headless Chromium lists a room's episodes and plays one (native HLS, and hls.js)."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import pytest

from conftest import make_config
from odsmedia.app import make_app
from recorder import episodes
from recorder.recorder import RECORDER
from testsupport.synthetic import SyntheticSession, read_segment

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture
async def app_client(aiohttp_client, service_urls, tmp_path):
    config = make_config(service_urls, tmp_path / "data", ODS_RECORDING_SEGMENT_SECONDS="2",
                         ODS_RECORDING_RECONNECT_GRACE="0")
    return await aiohttp_client(make_app(config))


async def record(app, room, seconds):
    recording = app[RECORDER].recording_for(room.id, room.slug, room.title)
    sinks = {"video": recording.add_track("video"), "audio": recording.add_track("audio")}
    for frame in SyntheticSession(seconds, width=640, height=360, gop_seconds=1.0).frames:
        sinks[frame.kind].on_frame(frame)
    for sink in sinks.values():
        sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 60)
    assert recording.status == "ready"
    return recording.episode_id


async def play(page, url):
    await page.goto(url)
    await page.wait_for_function(
        "() => { const v = document.querySelector('video'); return v && v.currentTime > 1.5; }", timeout=30000)
    return await page.evaluate("""() => {
        const v = document.querySelector('video');
        return {player: v.dataset.player, time: v.currentTime, frames: v.getVideoPlaybackQuality().totalVideoFrames, width: v.videoWidth, error: v.error && v.error.code,
                duration: v.duration, hlsjs_loaded: typeof window.Hls !== "undefined"};
    }""")


async def test_chromium_lists_episodes_and_plays_one(app_client, room_factory, browser):
    room = await room_factory(title="Pairing session")
    episode_id = await record(app_client.app, room, 6.0)
    base = str(app_client.make_url("/")).rstrip("/")
    page = await browser.new_page()
    try:
        await page.goto(f"{base}/rooms/{room.slug}/episodes")
        await page.wait_for_selector(f"li[data-episode='{episode_id}'] a")
        assert await page.text_content("#room-title") == "Pairing session"
        await page.click(f"li[data-episode='{episode_id}'] a")
        await page.wait_for_url(f"**/episodes/{episode_id}/watch")
        state = await play(page, page.url)
        assert state["player"] == "native" and not state["hlsjs_loaded"]   # fetched only when needed
        assert state["width"] == 640 and not state["error"] and state["frames"] > 0   # pictures were decoded
        # The chat section replays this episode's chat (chat.js mounted in replay mode).
        await page.wait_for_selector(f"#chat[data-episode='{episode_id}'][data-state='loaded']", timeout=10000)
        assert await page.get_attribute("#chat", "data-room") == room.slug
        assert state["duration"] == pytest.approx(6.0, abs=0.3)

        # The hls.js fallback (what a browser without native HLS gets) plays it too.
        state = await play(page, f"{base}/episodes/{episode_id}/watch?player=hlsjs")
        assert state["player"] == "hls.js" and not state["error"] and state["frames"] > 0
    finally:
        await page.close()


async def test_replay_page_shows_gate_refusal(app_client, room_factory, browser):
    room = await room_factory(policy="signed-in")
    episode_id = await record(app_client.app, room, 1.5)
    base = str(app_client.make_url("/")).rstrip("/")
    page = await browser.new_page()
    try:
        for path in (f"/episodes/{episode_id}/watch", f"/rooms/{room.slug}/episodes"):
            await page.goto(base + path)
            # The gate's status and reason, said in words, with the way forward.
            await page.wait_for_selector("#refusal[data-status='401'][data-code='sign_in_required']")
            assert await page.text_content("#refusal strong") == "Sign in to enter this room."
            assert await page.get_attribute("#refusal a", "href") == "/signin?next=" + quote(path, safe="")
    finally:
        await page.close()


async def test_chromium_host_session_is_recorded_and_replayed(app_client, room_factory, token_factory, browser):
    """The whole path with a real browser at both ends: Chromium publishes H.264 + Opus
    from the host page, the SFU fans out to the recorder, Chromium replays the episode."""
    room = await room_factory(title="Browser episode")
    token = await token_factory(room, "host")
    recorder = app_client.app[RECORDER]
    host_ctx = await browser.new_context()
    try:
        host = await host_ctx.new_page()
        await host.goto(str(app_client.make_url(f"/rooms/{room.slug}/host?token={token}")))
        await host.wait_for_selector("body[data-ready='1']", timeout=10000)
        await host.click("#golive")
        await host.wait_for_selector("body[data-connection='connected']", timeout=20000)
        deadline = asyncio.get_running_loop().time() + 40
        while True:
            recording = recorder.recordings.get(room.slug)
            if recording is not None and len(recording.listed) >= 2:
                break
            assert asyncio.get_running_loop().time() < deadline, "nothing recorded from Chromium"
            await asyncio.sleep(0.1)
        await host.click("#stop")
        await asyncio.wait_for(recording.done.wait(), 30)
    finally:
        await host_ctx.close()
    assert recording.status == "ready"
    rows = await episodes.segments(recorder.db, recording.episode_id)
    for r in rows:
        init = recorder.storage.read(f"{recording.storage_key}/{r.init_name}")
        decoded = read_segment(init, recorder.storage.read(f"{recording.storage_key}/{r.name}"))
        assert decoded.video_pts and decoded.audio_pts

    page = await browser.new_page()
    try:
        state = await play(page, str(app_client.make_url(f"/episodes/{recording.episode_id}/watch")))
        assert state["player"] == "native" and not state["error"] and state["width"] > 0 and state["frames"] > 0
    finally:
        await page.close()
    # Chromium honours the recorder's keyframe requests (PLIs through the SFU): segments
    # are cut near the 2 s target, not at Chromium's own rare keyframes (~8 s).
    # The first segment may be short (it starts wherever both tracks first line
    # up); none may run long, which is what ignored PLIs produce.
    durations = [round(r.duration, 2) for r in rows[:-1]]
    assert durations and all(d <= 2.6 for d in durations), durations


async def test_chromium_plays_an_episode_with_aac_audio(aiohttp_client, service_urls, room_factory, browser,
                                                         tmp_path):
    config = make_config(service_urls, tmp_path / "data", ODS_RECORDING_SEGMENT_SECONDS="2",
                         ODS_RECORDING_RECONNECT_GRACE="0", ODS_RECORDING_AUDIO_CODEC="aac")
    client = await aiohttp_client(make_app(config))
    room = await room_factory()
    episode_id = await record(client.app, room, 4.0)
    init = await (await client.get(f"/episodes/{episode_id}/init-0.mp4")).read()
    assert b"mp4a" in init
    page = await browser.new_page()
    try:
        state = await play(page, str(client.make_url(f"/episodes/{episode_id}/watch")))
        assert state["player"] == "native" and not state["error"]
    finally:
        await page.close()


async def test_chromium_plays_through_a_reconnect_discontinuity(app_client, room_factory, browser):
    room = await room_factory()
    recorder = app_client.app[RECORDER]
    recorder.reconnect_grace = 30
    recording = recorder.recording_for(room.id, room.slug)
    # The host publishes 640x360, drops, and comes back at 480x270 half a second later.
    parts = [SyntheticSession(3.0, width=640, height=360, gop_seconds=1.0, seed=1),
             SyntheticSession(3.0, width=480, height=270, gop_seconds=1.0, arrival0=1003.5, first_index=90, seed=2)]
    for part in parts:
        sinks = {"video": recording.add_track("video"), "audio": recording.add_track("audio")}
        for frame in part.frames:
            sinks[frame.kind].on_frame(frame)
        for sink in sinks.values():
            sink.on_end()
    recording.end()
    await asyncio.wait_for(recording.done.wait(), 60)
    rows = await episodes.segments(recorder.db, recording.episode_id)
    assert sum(r.discontinuity for r in rows) == 1
    page = await browser.new_page()
    try:
        for query in ("", "?player=hlsjs"):
            await page.goto(str(app_client.make_url(f"/episodes/{recording.episode_id}/watch{query}")))
            # Past the discontinuity (replay time 3 s) and into the second part's frames.
            await page.wait_for_function(
                "() => { const v = document.querySelector('video'); return v && v.currentTime > 4.0; }",
                timeout=30000)
            state = await page.evaluate(
                "() => { const v = document.querySelector('video'); return [v.videoWidth, v.error && v.error.code]; }")
            assert state == [480, None], (query, state)
    finally:
        await page.close()


async def test_highlights_are_chapter_marks_that_seek_the_replay(app_client, room_factory, browser, db, tmp_path):
    room = await room_factory(title="Live coding")
    episode_id = await record(app_client.app, room, 6.0)
    # A highlight posted 4.25 s into the session (what live posting stores).
    await db.execute(
        "INSERT INTO chat_items (room_id, id, changed_seq, kind, author, author_name, body, episode_id, "
        "episode_offset) VALUES ($1, 1, 1, 'highlight', 'v:x', 'Ada', 'the fix', $2, 4.25)", room.id, episode_id)
    await db.execute("INSERT INTO chat_rooms (room_id, last_seq) VALUES ($1, 1) ON CONFLICT DO NOTHING", room.id)
    page = await browser.new_page()
    try:
        await play(page, str(app_client.make_url(f"/episodes/{episode_id}/watch")))
        await page.wait_for_selector("#chapters:not([hidden]) .chapter-mark")
        assert await page.text_content("#chapter-list li button") == "0:04 the fix"
        left = await page.evaluate("document.querySelector('.chapter-mark').style.left")
        assert float(left.rstrip("%")) == pytest.approx(100 * 4.25 / 6.0, abs=3)
        await page.evaluate("document.querySelector('video').pause()")
        await page.click("#chapter-list li button")
        await page.wait_for_function("() => Math.abs(document.querySelector('video').currentTime - 4.25) < 0.5",
                                     timeout=10000)
        await page.screenshot(path=str(tmp_path / "replay-chapters.png"))
    finally:
        await page.close()
