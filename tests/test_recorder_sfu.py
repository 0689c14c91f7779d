"""End to end: an aiortc publisher over WHIP, the SFU fan-out, the recorder sink, an episode."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc import RTCSessionDescription

from conftest import make_config
from odsmedia.app import make_app
from odsmedia.rooms.sfu import SFU
from recorder import episodes
from recorder.recorder import RECORDER
from testsupport.peers import read_counter, whip_offer
from testsupport.synthetic import read_segment

pytestmark = pytest.mark.timeout(120)
SDP = {"Content-Type": "application/sdp"}


async def test_whip_publisher_is_recorded_to_a_ready_episode(aiohttp_client, service_urls, room_factory,
                                                             token_factory, tmp_path):
    config = make_config(service_urls, tmp_path / "data", ODS_RECORDING_SEGMENT_SECONDS="1",
                         ODS_RECORDING_RECONNECT_GRACE="0")
    client = await aiohttp_client(make_app(config))
    app = client.server.app
    recorder = app[RECORDER]
    assert recorder in app[SFU].observers
    room = await room_factory()
    host = {"Authorization": f"Bearer {await token_factory(room, 'host')}"}
    publisher, offer = await whip_offer()
    try:
        resp = await client.post(f"/rooms/{room.slug}/whip", data=offer,
                                 headers={**host, **SDP})
        assert resp.status == 201, await resp.text()
        location = resp.headers["Location"]
        await publisher.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))

        # The room's first publication started an episode; wait until 3 segments are listed.
        deadline = time.monotonic() + 60
        while True:
            recording = recorder.recordings.get(room.slug)
            if recording is not None and len(recording.listed) >= 3:
                break
            assert time.monotonic() < deadline, "the recorder listed no segments"
            await asyncio.sleep(0.05)
        # A moderator mutes the video for a while, then unmutes it: the recording resumes at a
        # keyframe (the SFU gates its sinks and asks the publisher for one).
        live_room = app[SFU].get(room.slug)
        camera = next(p for p in live_room.publications.values() if p.kind == "video")
        muted_at = len(recording.listed)
        live_room.set_muted(camera, True, by="moderator")
        # The mute lasts a second of media: fifteen frames the publisher sends meanwhile
        # reach the SFU and go nowhere.
        until = camera.frames + 15
        while camera.frames < until:
            assert time.monotonic() < deadline, "the publisher's frames stopped reaching the SFU"
            await asyncio.sleep(0.05)
        live_room.set_muted(camera, False, by="moderator")
        while len(recording.listed) < muted_at + 3:
            assert time.monotonic() < deadline, "the recorder listed nothing after unmute"
            await asyncio.sleep(0.05)
        live = await episodes.get(recorder.db, recording.episode_id)
        assert live.status == "live"
        resp = await client.get(f"/episodes/{live.id}/index.m3u8")
        assert "#EXT-X-PLAYLIST-TYPE:EVENT" in await resp.text()

        assert (await client.delete(location, headers=host)).status == 200
        await asyncio.wait_for(recording.done.wait(), 30)
    finally:
        await publisher.close()

    episode = await episodes.get(recorder.db, recording.episode_id)
    assert episode.status == "ready" and episode.room_id == room.id
    rows = await episodes.segments(recorder.db, episode.id)
    assert len(rows) >= 3
    resp = await client.get(f"/episodes/{episode.id}/index.m3u8")
    text = await resp.text()
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    # The recorder asked the publisher for keyframes: segments are cut near the 1 s target,
    # not at aiortc's own (rare) keyframes.
    assert all(round(r.duration) <= 2 for r in rows[:-1])

    counters: list[int] = []
    keyframes: set[int] = set()
    has_audio = False
    for row in rows:
        init = await (await client.get(f"/episodes/{episode.id}/{row.init_name}")).read()
        data = await (await client.get(f"/episodes/{episode.id}/{row.name}")).read()
        decoded = read_segment(init, data)
        assert decoded.video, row.name
        has_audio = has_audio or bool(decoded.audio_pts)
        # Every segment starts with a decodable frame (it was cut at a keyframe).
        for frame in _frames(init, data):
            counters.append(read_counter(frame))
            keyframes.add(counters[-1]) if frame.key_frame else None
    assert has_audio
    assert all(b > a for a, b in zip(counters, counters[1:]))
    # Loopback: every frame reaches the recording except those sent while muted (one gap).
    gaps = [(a, b) for a, b in zip(counters, counters[1:]) if b != a + 1]
    # (At least the 15 frames that reached the SFU while muted are missing.)
    assert len(gaps) == 1 and 16 <= gaps[0][1] - gaps[0][0] <= 60
    # ... and the recording resumed on a keyframe, not on frames referring to skipped ones.
    assert gaps[0][1] in keyframes


def _frames(init: bytes, data: bytes):
    import io

    import av

    with av.open(io.BytesIO(init + data), format="mp4") as container:
        for frame in container.decode(video=0):
            yield frame


async def test_observer_records_publications_and_honours_recording_enabled(db, room_factory, config, tmp_path):
    """The SFU's own Room/Publication objects, no network: publications delivered to the
    recorder through the observer; with recording.enabled = false nothing is recorded."""
    from aiortc import RTCRtpCodecParameters

    from odsmedia.rooms.participant import Participant
    from odsmedia.rooms.publication import Publication
    from odsmedia.rooms.room import Room
    from odsmedia.rooms.sfu import Sfu
    from recorder.recorder import Recorder
    from recorder.storage import LocalStorage
    from testsupport.synthetic import SyntheticSession

    record = await room_factory()
    sfu = Sfu(config)
    room = Room(sfu, record)
    host = Participant("a:1", "Host", "host")
    plis = []

    def publish(kind: str) -> Publication:
        codec = (RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102) if kind == "video"
                 else RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111))
        publication = Publication(host, kind, codec, source="camera" if kind == "video" else "mic",
                                  pli_interval=0, request_pli=lambda: plis.append(kind))
        sfu.publication_added(room, publication)
        return publication

    off = Recorder(db, LocalStorage(tmp_path / "off"), node="n", enabled=False)
    sfu.add_observer(off)
    on = Recorder(db, LocalStorage(tmp_path / "on"), node="n", segment_seconds=1.0, reconnect_grace=0)
    sfu.add_observer(on)
    video, audio = publish("video"), publish("audio")
    assert off.recordings == {} and not (tmp_path / "off").exists()
    recording = on.recordings[record.slug]
    assert plis == ["video"]       # the recorder asked for a keyframe at once
    for frame in SyntheticSession(2.5, gop_seconds=0.5).frames:
        (video if frame.kind == "video" else audio).deliver(frame)
    video.end()
    sfu.publication_removed(room, video)
    audio.end()
    sfu.publication_removed(room, audio)
    await asyncio.wait_for(recording.done.wait(), 30)
    assert recording.status == "ready"
    rows = await episodes.segments(db, recording.episode_id)
    assert [round(r.duration, 2) for r in rows] == [1.0, 1.0, 0.5]
    assert not video.sinks and not audio.sinks and not on._sinks
    await on.close()
    await off.close()
