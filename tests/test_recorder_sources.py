"""Every source of a session is recorded: one rendition per video source, lined up by sender reports."""

from __future__ import annotations

import array
import asyncio
import dataclasses
import fractions
import math
import re
import time

import av
import pytest
from aiortc import MediaStreamTrack, RTCSessionDescription

from conftest import make_config
from odsmedia.app import make_app
from odsmedia.rooms.sfu import SFU
from recorder import episodes
from recorder.clock import SR_WAIT
from recorder.recorder import RECORDER, Recorder
from recorder.storage import LocalStorage
from recorder.track import TrackSink
from testsupport.peers import CounterVideoTrack, peer
from testsupport.synthetic import SyntheticSession, read_segment, record_sources

NTP_BASE = 3_900_000_000      # seconds since 1900: any sender's wall clock


def decode(recorder: Recorder, key: str, rows: list[episodes.SegmentRow]):
    video, onsets = [], []
    for r in rows:
        init = recorder.storage.read(f"{key}/{r.init_name}")
        got = read_segment(init, recorder.storage.read(f"{key}/{r.name}"))
        # Decode times restart at zero in each period's files; the rows keep the episode timeline
        # (a segment starts with its first video frame).
        base = r.start_offset - got.video[0][0] if got.video else 0.0
        video += [(base + pts, c) for pts, c in got.video]
        onsets += [base + t for t in got.audio_onsets]
    return video, onsets


def first_frame_report():
    """A sender report as the publisher's RTCP would carry it (on the frames' timestamp scale):
    timestamp 0, the track's first frame, was captured at NTP_BASE (both tracks start together)."""
    ntp = NTP_BASE << 32
    return lambda: (ntp, 0)


async def test_each_video_source_is_its_own_rendition(db, room_factory, tmp_path):
    room = await room_factory()
    recorder = Recorder(db, LocalStorage(tmp_path), node="node-a", segment_seconds=1.0, reconnect_grace=0)
    recording = recorder.recording_for(room.id, room.slug)
    await record_sources(recording, {
        "camera": SyntheticSession(3.0, audio=True, gop_seconds=0.5, seed=1),
        "screen": SyntheticSession(3.0, audio=False, gop_seconds=0.5, first_index=1000, seed=2, width=352,
                                   height=192, arrival0=1000.5)})

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
    screen.frames = [dataclasses.replace(f, arrival=f.arrival + delay) for f in screen.frames]
    reports = {s: first_frame_report() for s in ("camera", "screen")} if with_reports else None
    await record_sources(recording, {"camera": camera, "screen": screen}, sender_reports=reports, publisher="host")

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
    recording = app[RECORDER].recording_for(room.id, room.slug, room.title)
    await record_sources(recording, {
        "camera": SyntheticSession(3.0, audio=True, gop_seconds=0.5, seed=1),
        "screen": SyntheticSession(3.0 - screen_after, audio=False, gop_seconds=0.5, first_index=1000, seed=2,
                                   width=352, height=192, arrival0=1000.0 + screen_after)})
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
            screen["playlist"]) == ("screen", True, 352, 192, "opus", f"/episodes/{episode_id}/screen.m3u8")
    assert (camera["source"], camera["main"], camera["width"], camera["height"], camera["playlist"], camera["offset"]) == (
        "camera", False, 320, 180, f"/episodes/{episode_id}/index.m3u8", 0.0)
    # Offsets are on the episode's clock (started_at, chat offsets): the screen came 0.5 s in.
    assert screen["offset"] == pytest.approx(0.5, abs=0.02)
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


async def test_a_screen_shared_well_into_the_episode_does_not_lead_it(app_client, room_factory, token_factory):
    # The host opened with the camera and shared the screen 2.5 s in: a player driven by the
    # screen's playlist could not reach the first 2.5 s, so the camera leads (large, the
    # replay page's clock and controls, the multivariant playlist's main variant) and the
    # screen is the other picture from its offset on.
    room = await room_factory(policy="signed-in")
    episode_id = await record_camera_then_screen(app_client.app, room, screen_after=2.5)
    viewer = {"Authorization": f"Bearer {await token_factory(room, role='viewer')}"}
    meta = await (await app_client.get(f"/episodes/{episode_id}", headers=viewer)).json()
    renditions = {r["name"]: r for r in meta["renditions"]}
    assert (renditions["camera"]["main"], renditions["camera"]["offset"]) == (True, 0.0)
    assert renditions["screen"]["main"] is False
    assert renditions["screen"]["offset"] == pytest.approx(2.5, abs=0.02)
    lines = (await (await app_client.get(f"/episodes/{episode_id}/master.m3u8", headers=viewer)).text()).splitlines()
    assert lines[3] == '#EXT-X-MEDIA:TYPE=VIDEO,GROUP-ID="sources",NAME="camera",DEFAULT=YES,AUTOSELECT=YES'
    assert lines[4] == ('#EXT-X-MEDIA:TYPE=VIDEO,GROUP-ID="sources",NAME="screen",DEFAULT=NO,AUTOSELECT=NO,'
                        'URI="screen.m3u8"')
    assert lines[6:] == ["index.m3u8"]


class BeepTrack(MediaStreamTrack):
    """Microphone stand-in: 20 ms frames, silent except a 1 kHz beep on every whole second
    (from 1 s) of the shared capture clock, so a reader finds when each second was captured."""

    kind = "audio"

    def __init__(self, start: float) -> None:
        super().__init__()
        self.start = start
        self.sent = 0

    async def recv(self) -> av.AudioFrame:
        wait = self.start + self.sent / 48000 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        samples = array.array("h", bytes(960 * 2))
        for k in range(960):
            t = (self.sent + k) / 48000
            if t >= 1.0 and t % 1.0 < 0.1:
                samples[k] = int(12000 * math.sin(2 * math.pi * 1000 * t))
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate = 48000
        frame.pts = self.sent
        frame.time_base = fractions.Fraction(1, 48000)
        self.sent += 960
        return frame


class DelayedSink:
    """The network holding one source's frames back ``delay`` s on their way to the recorder
    (its sender reports, which carry the publisher's capture clock, are unaffected)."""

    def __init__(self, sink, delay: float) -> None:
        self.sink, self.delay = sink, delay
        self.loop = asyncio.get_running_loop()

    def on_frame(self, frame) -> None:
        self.loop.call_later(self.delay, self.sink.on_frame, dataclasses.replace(frame, arrival=frame.arrival + self.delay))

    def on_end(self) -> None:
        self.loop.call_later(self.delay + 0.05, self.sink.on_end)

    def restart_at_keyframe(self) -> None:
        self.sink.restart_at_keyframe()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sender_reports", [True, False])
async def test_aiortc_publisher_sources_stay_in_sync_when_one_arrives_late(
        aiohttp_client, service_urls, tmp_path, room_factory, peers, sender_reports):
    """One aiortc publisher sends camera, screen and microphone on one capture clock (camera and
    screen frame i, and the beep of second k, captured at the same instant); the screen's frames
    reach the recorder 0.4 s late.  Decoded with PyAV, the recording keeps all three within 100 ms
    of each other thanks to the sender reports; with the reports ignored (placed by arrival) the
    screen sits 0.4 s late, which this test catches."""
    delay = 0.4
    config = make_config(service_urls, tmp_path / "data", ODS_RECORDING_SEGMENT_SECONDS="1",
                         ODS_RECORDING_RECONNECT_GRACE="0")
    client = await aiohttp_client(make_app(config))
    recorder = client.app[RECORDER]
    room = await room_factory()
    host = await peers.client(client, room, role="host")
    pc = peer()
    start = time.monotonic() + 1.0
    camera, screen, mic = CounterVideoTrack(15), CounterVideoTrack(15), BeepTrack(start)
    camera._start = screen._start = start           # one capture clock for both pictures
    tracks = {"camera": camera, "screen": screen, "microphone": mic}
    transceivers = {source: pc.addTransceiver(track, direction="sendonly") for source, track in tracks.items()}
    try:
        await pc.setLocalDescription(await pc.createOffer())
        reply = await host.request({"type": "publish", "sdp": pc.localDescription.sdp,
                                    "sources": {t.mid: source for source, t in transceivers.items()}})
        recording = recorder.recordings[room.slug]
        live_room = client.app[SFU].get(room.slug)
        by_source = {p.source: p for p in live_room.publications.values()}
        for source, publication in by_source.items():
            sink = next(s for s in publication.sinks if isinstance(s, TrackSink))
            if not sender_reports:
                sink.sender_report = lambda: None          # what ignoring the reports amounts to
            if source == "screen":
                publication.remove_sink(sink)
                publication.add_sink(DelayedSink(sink, delay))
        await pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        deadline = time.monotonic() + 60
        while min(len(r.playlist.entries) for r in recording.renditions) < 5 or len(recording.renditions) < 2:
            assert time.monotonic() < deadline, "the recorder listed too few segments"
            await asyncio.sleep(0.1)
        # Every track was placed by its publisher's sender report, or (ignoring them) by arrival.
        assert {t.source: t.clock.by_report for t in recording.tracks} == {
            "camera": sender_reports, "screen": sender_reports, "microphone": sender_reports}
    finally:
        await pc.close()
    await asyncio.wait_for(recording.done.wait(), 30)

    episode_id = recording.episode_id
    names = {r.source: r.rendition for r in await episodes.renditions(recorder.db, episode_id)}
    cam_video, cam_onsets = decode(recorder, recording.storage_key,
                                   await episodes.segments(recorder.db, episode_id, names["camera"]))
    scr_video, _ = decode(recorder, recording.storage_key,
                          await episodes.segments(recorder.db, episode_id, names["screen"]))
    at_cam = {c: pts for pts, c in cam_video}
    screen_offsets = [pts - at_cam[c] for pts, c in scr_video if c in at_cam]
    assert len(screen_offsets) >= 30
    # Beep k was captured with camera frame 15k.
    audio_offsets = [onset - at_cam[15 * round(onset_k)] for onset, onset_k in _beeps(cam_onsets, at_cam)]
    assert len(audio_offsets) >= 2
    if sender_reports:
        assert max(map(abs, screen_offsets)) <= 0.1, screen_offsets
        assert max(map(abs, audio_offsets)) <= 0.1, audio_offsets
    else:
        assert min(screen_offsets) >= delay - 0.1, screen_offsets


def _beeps(onsets: list[float], at_cam: dict[int, float]):
    """(onset, the capture second it marks): the camera frame nearest in the recording names it."""
    by_pts = sorted((pts, c) for c, pts in at_cam.items())
    for onset in onsets:
        pts, c = min(by_pts, key=lambda pair: abs(pair[0] - onset))
        second = round(c / 15)
        if 15 * second in at_cam:
            yield onset, second


async def test_a_keyframe_captured_before_time_zero_is_asked_for_again(db, room_factory, tmp_path):
    """The microphone's first frame sets the episode's time zero; by the publisher's sender reports
    the camera's first keyframe was captured 0.1 s before it, so it cannot be recorded.  The
    recorder asks for another keyframe at once (the publication rate-limits the requests) instead
    of waiting for the publisher's next one, which may be long enough for the audio to open the
    episode without picture."""
    room = await room_factory()
    recorder = Recorder(db, LocalStorage(tmp_path), node="node-a", segment_seconds=1.0, reconnect_grace=0)
    recording = recorder.recording_for(room.id, room.slug)
    session = SyntheticSession(1.0, gop_seconds=1.0, jitter=0.0)
    audio = next(f for f in session.frames if f.kind == "audio")
    keyframe = next(f for f in session.frames if f.kind == "video")
    assert keyframe.keyframe and keyframe.timestamp == 0 and audio.timestamp == 0
    requests: list[str] = []
    microphone = recording.add_track("audio", source="microphone", publisher="host",
                                     sender_report=lambda: ((NTP_BASE << 32) + (1 << 32) // 10, 0))
    camera = recording.add_track("video", requests.append, source="camera", publisher="host",
                                 sender_report=first_frame_report())
    assert requests == ["recorder"]                       # asked once as the camera attached
    microphone.on_frame(dataclasses.replace(audio, arrival=100.0))
    camera.on_frame(dataclasses.replace(keyframe, arrival=100.05))
    assert requests == ["recorder", "recorder"]           # dropped before time zero: asked again
    for sink in (microphone, camera):
        sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 30)
    await recorder.close()
