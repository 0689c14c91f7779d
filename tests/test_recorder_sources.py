"""Every source of a session is recorded: one rendition per video source, lined up by sender reports."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest

from conftest import make_config
from odsmedia.app import make_app
from recorder import episodes
from recorder.clock import SR_WAIT
from recorder.recorder import RECORDER, Recorder
from recorder.storage import LocalStorage
from testsupport.synthetic import SyntheticSession, read_segment

NTP_BASE = 3_900_000_000      # seconds since 1900: any sender's wall clock


def decode(recorder: Recorder, key: str, rows: list[episodes.SegmentRow]):
    video, onsets = [], []
    for r in rows:
        init = recorder.storage.read(f"{key}/{r.init_name}")
        got = read_segment(init, recorder.storage.read(f"{key}/{r.name}"))
        # Decode times restart at zero in each period's files; the rows keep the episode timeline.
        video += [(r.start_offset + pts - got.video[0][0] if got.video else pts, c) for pts, c in got.video]
        onsets += got.audio_onsets
    return video, onsets


def report_for(track_start: float, clock_rate: int):
    """A sender report as the publisher's RTCP would carry it: its first RTP timestamp (0)
    was captured at NTP_BASE + ``track_start``."""
    ntp = round((NTP_BASE + track_start) * 2**32)
    return lambda: (ntp, 0)


async def test_each_video_source_is_its_own_rendition(db, room_factory, tmp_path):
    room = await room_factory()
    recorder = Recorder(db, LocalStorage(tmp_path), node="node-a", segment_seconds=1.0, reconnect_grace=0)
    recording = recorder.recording_for(room.id, room.slug)
    camera = SyntheticSession(3.0, audio=True, gop_seconds=0.5, seed=1)
    screen = SyntheticSession(3.0, audio=False, gop_seconds=0.5, first_index=1000, seed=2, width=352,
                              height=192, arrival0=1000.5)
    sinks = {"camera": recording.add_track("video", source="camera"),
             "microphone": recording.add_track("audio", source="microphone"),
             "screen": recording.add_track("video", source="screen")}
    merged = sorted([(f, "camera" if f.kind == "video" else "microphone") for f in camera.frames]
                    + [(f, "screen") for f in screen.frames], key=lambda pair: pair[0].arrival)
    for frame, source in merged:
        sinks[source].on_frame(frame)
    for sink in sinks.values():
        sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 30)

    renditions = await episodes.renditions(db, recording.episode_id)
    assert [(r.rendition, r.label, r.source, r.width, r.height, r.audio_codec) for r in renditions] == [
        ("", "camera", "camera", 320, 180, "opus"), ("screen", "screen", "screen", 352, 192, "opus")]
    assert all(r.video_codec.startswith("avc1.42") for r in renditions)
    cam_rows = await episodes.segments(db, recording.episode_id)
    screen_rows = await episodes.segments(db, recording.episode_id, "screen")
    assert all(r.name.startswith("screen.") and r.init_name.startswith("screen.init-") for r in screen_rows)
    assert not any("." in r.name[:-4] for r in cam_rows)
    # The screen rendition starts where the screen's first frame arrived on the episode timeline.
    assert screen_rows[0].start_offset == pytest.approx(0.5, abs=0.02)
    cam_video, cam_onsets = decode(recorder, recording.storage_key, cam_rows)
    screen_video, screen_onsets = decode(recorder, recording.storage_key, screen_rows)
    assert [c for _, c in cam_video] == list(range(90))
    assert [c for _, c in screen_video] == list(range(1000, 1090))
    # The microphone is muxed into both renditions: its beeps at 1 s and 2 s of source time.
    assert len(cam_onsets) == 2 and len(screen_onsets) == 2
    episode = await episodes.get(db, recording.episode_id)
    assert episode.segment_count == len(cam_rows)
    assert episode.duration == pytest.approx(3.5, abs=0.05)
    await recorder.close()


@pytest.mark.parametrize("with_reports", [True, False])
async def test_sender_reports_line_up_a_source_that_arrives_late(db, room_factory, tmp_path, with_reports):
    """One publisher, camera and screen captured together (frame i of both at the same instant);
    the screen's frames reach the recorder 0.4 s late.  With the publisher's sender reports the
    two renditions line up within a frame; placed by arrival (no reports) they are 0.4 s apart,
    which is what this test would see if the reports were ignored."""
    delay = 0.4
    room = await room_factory()
    recorder = Recorder(db, LocalStorage(tmp_path), node="node-a", segment_seconds=1.0, reconnect_grace=0)
    recording = recorder.recording_for(room.id, room.slug)
    camera = SyntheticSession(4.0, audio=False, gop_seconds=0.5, seed=1)
    screen = SyntheticSession(4.0, audio=False, gop_seconds=0.5, first_index=1000, seed=2)
    late = [dataclasses.replace(f, arrival=f.arrival + delay) for f in screen.frames]
    reports = {s: report_for(0.0, 90000) if with_reports else None for s in ("camera", "screen")}
    sinks = {s: recording.add_track("video", source=s, publisher="host", sender_report=reports[s])
             for s in ("camera", "screen")}
    merged = sorted([(f, "camera") for f in camera.frames] + [(f, "screen") for f in late],
                    key=lambda pair: pair[0].arrival)
    for frame, source in merged:
        sinks[source].on_frame(frame)
    for sink in sinks.values():
        sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 30)

    cam, _ = decode(recorder, recording.storage_key, await episodes.segments(db, recording.episode_id))
    scr, _ = decode(recorder, recording.storage_key, await episodes.segments(db, recording.episode_id, "screen"))
    at_cam = {c: pts for pts, c in cam}
    offsets = [pts - at_cam[c - 1000] for pts, c in scr if c - 1000 in at_cam]
    assert len(offsets) >= 100
    worst = max(offsets, key=abs)
    if with_reports:
        assert abs(worst) <= 0.1 and all(abs(o) < 0.04 for o in offsets)
    else:
        assert min(offsets) >= delay - 0.02    # what arrival alignment gives: the network's delay
    await recorder.close()


async def test_a_track_without_reports_is_placed_by_arrival_after_the_wait(db, room_factory, tmp_path):
    """A publisher that never sends a sender report still records: its frames are held for
    SR_WAIT, then placed by arrival, none lost."""
    room = await room_factory()
    recorder = Recorder(db, LocalStorage(tmp_path), node="node-a", segment_seconds=1.0, reconnect_grace=0)
    recording = recorder.recording_for(room.id, room.slug)
    session = SyntheticSession(SR_WAIT + 1.0, audio=False, gop_seconds=0.5)
    sink = recording.add_track("video", sender_report=lambda: None)
    for frame in session.frames:
        sink.on_frame(frame)
    sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 30)
    video, _ = decode(recorder, recording.storage_key, await episodes.segments(db, recording.episode_id))
    assert [c for _, c in video] == list(range(len(session.frames)))
    assert video[0][0] == pytest.approx(0.0, abs=0.01)
    await recorder.close()


async def record_camera_then_screen(app, room, screen_after: float = 0.5):
    """Camera + microphone from the start, the screen share from ``screen_after`` s: the episode the API lists."""
    recorder = app[RECORDER]
    recording = recorder.recording_for(room.id, room.slug, room.title)
    camera = SyntheticSession(3.0, audio=True, gop_seconds=0.5, seed=1)
    screen = SyntheticSession(3.0 - screen_after, audio=False, gop_seconds=0.5, first_index=1000, seed=2,
                              width=352, height=192, arrival0=1000.0 + screen_after)
    sinks = {"camera": recording.add_track("video", source="camera"),
             "microphone": recording.add_track("audio", source="microphone"),
             "screen": recording.add_track("video", source="screen")}
    merged = sorted([(f, "camera" if f.kind == "video" else "microphone") for f in camera.frames]
                    + [(f, "screen") for f in screen.frames], key=lambda pair: pair[0].arrival)
    for frame, source in merged:
        sinks[source].on_frame(frame)
    for sink in sinks.values():
        sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 30)
    assert recording.status == "ready"
    return recording.episode_id


@pytest.fixture
async def app_client(aiohttp_client, service_urls, tmp_path):
    config = make_config(service_urls, tmp_path / "data", ODS_RECORDING_SEGMENT_SECONDS="1",
                         ODS_RECORDING_RECONNECT_GRACE="0")
    return await aiohttp_client(make_app(config))


async def test_episode_api_and_multivariant_playlist_name_screen_and_camera(app_client, room_factory, token_factory):
    room = await room_factory(policy="signed-in")
    episode_id = await record_camera_then_screen(app_client.app, room)
    viewer = {"Authorization": f"Bearer {await token_factory(room, role='viewer')}"}

    meta = await (await app_client.get(f"/episodes/{episode_id}", headers=viewer)).json()
    assert meta["playlist"] == f"/episodes/{episode_id}/index.m3u8"       # unchanged: the first rendition
    assert meta["master"] == f"/episodes/{episode_id}/master.m3u8"
    renditions = {r["name"]: r for r in meta["renditions"]}
    assert set(renditions) == {"camera", "screen"}
    camera, screen = renditions["camera"], renditions["screen"]
    assert (screen["source"], screen["main"], screen["width"], screen["height"], screen["audio_codec"],
            screen["playlist"], screen["offset"]) == (
        "screen", True, 352, 192, "opus", f"/episodes/{episode_id}/screen.m3u8", 0.0)
    assert (camera["source"], camera["main"], camera["width"], camera["height"], camera["playlist"]) == (
        "camera", False, 320, 180, f"/episodes/{episode_id}/index.m3u8")
    # The camera started 0.5 s before the screen: replay time zero is the screen's start.
    assert camera["offset"] == pytest.approx(-0.5, abs=0.02)
    assert screen["video_codec"].startswith("avc1.42") and camera["video_codec"].startswith("avc1.42")

    resp = await app_client.get(f"/episodes/{episode_id}/master.m3u8", headers=viewer)
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/vnd.apple.mpegurl"
    lines = (await resp.text()).splitlines()
    assert lines[:3] == ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    assert lines[3] == '#EXT-X-MEDIA:TYPE=VIDEO,GROUP-ID="sources",NAME="screen",DEFAULT=YES,AUTOSELECT=YES'
    assert lines[4] == ('#EXT-X-MEDIA:TYPE=VIDEO,GROUP-ID="sources",NAME="camera",DEFAULT=NO,AUTOSELECT=NO,'
                        'URI="index.m3u8"')
    assert re.fullmatch(r'#EXT-X-STREAM-INF:BANDWIDTH=\d+,AVERAGE-BANDWIDTH=\d+,'
                        + re.escape(f'CODECS="{screen["video_codec"]},opus",RESOLUTION=352x192,VIDEO="sources"'),
                        lines[5]), lines[5]
    assert lines[6:] == ["screen.m3u8"]

    text = await (await app_client.get(f"/episodes/{episode_id}/screen.m3u8", headers=viewer)).text()
    assert '#EXT-X-MAP:URI="screen.init-0.mp4"' in text and text.rstrip().endswith("#EXT-X-ENDLIST")
    names = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert names[0] == "screen.00001-0.m4s"
    init = await app_client.get(f"/episodes/{episode_id}/screen.init-0.mp4", headers=viewer)
    segment = await app_client.get(f"/episodes/{episode_id}/{names[0]}", headers=viewer)
    assert init.status == segment.status == 200 and segment.headers["Content-Type"] == "video/mp4"
    got = read_segment(await init.read(), await segment.read())
    assert got.video[0][1] == 1000

    resp = await app_client.get(f"/episodes/{episode_id}/camera-2.m3u8", headers=viewer)
    assert resp.status == 404 and (await resp.json())["error"] == "rendition_not_found"
    resp = await app_client.get(f"/episodes/{episode_id}/camera.00001-0.m4s", headers=viewer)
    assert resp.status == 404 and (await resp.json())["error"] == "segment_not_found"
    # Every new URL goes through the room's gate.
    for path in (f"/episodes/{episode_id}/master.m3u8", f"/episodes/{episode_id}/screen.m3u8",
                 f"/episodes/{episode_id}/screen.init-0.mp4", f"/episodes/{episode_id}/{names[0]}"):
        resp = await app_client.get(path)
        assert resp.status == 401 and (await resp.json())["error"] == "sign_in_required", path
