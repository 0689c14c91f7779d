"""Episode lifecycle with real Postgres: rows, the live EVENT playlist, ENDLIST and ready."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
from prometheus_client import REGISTRY

from recorder import episodes
from recorder.recorder import Recorder
from recorder.recording import PLAYLIST
from recorder.storage import LocalStorage
from testsupport.synthetic import SyntheticSession, read_segment


async def wait_for(condition, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class KeyframeRequests:
    """Stands in for Publication.request_keyframe: counts what the recorder asked for."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str = "") -> None:
        self.reasons.append(reason)


async def test_episode_rows_event_playlist_then_endlist_and_ready(db, room_factory, tmp_path):
    room = await room_factory(title="Live coding")
    storage = LocalStorage(tmp_path)
    recorder = Recorder(db, storage, node="node-a", segment_seconds=1.0, reconnect_grace=0)
    recording = recorder.recording_for(room.id, room.slug, room.title)
    video_keyframes = KeyframeRequests()
    video = recording.add_track("video", video_keyframes)
    audio = recording.add_track("audio")
    session = SyntheticSession(4.0, gop_seconds=0.5)
    half = len(session.frames) // 2
    for frame in session.frames[:half]:
        (video if frame.kind == "video" else audio).on_frame(frame)
    await recording.created.wait()
    row = await episodes.get(db, recording.episode_id)
    assert row.status == "live" and row.room_id == room.id and row.title.startswith("Live coding")
    assert row.node == "node-a"

    # While live: the EVENT playlist lists what has closed, without ENDLIST.
    key = f"{recording.storage_key}/{PLAYLIST}"
    text = await wait_for(lambda: storage.size(key) and storage.read(key).decode(), what="live playlist")
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and "#EXT-X-ENDLIST" not in text
    assert "#EXT-X-TARGETDURATION:1" in text and '#EXT-X-MAP:URI="init-0.mp4"' in text
    # Row before playlist: whatever the playlist lists already has its row.
    rows = await episodes.segments(db, recording.episode_id)
    listed = [line for line in text.splitlines() if line.endswith(".m4s")]
    assert listed and set(listed) <= {r.name for r in rows}

    for frame in session.frames[half:]:
        (video if frame.kind == "video" else audio).on_frame(frame)
    video.on_end()
    audio.on_end()
    await asyncio.wait_for(recording.done.wait(), 30)

    row = await episodes.get(db, recording.episode_id)
    assert row.status == "ready" and row.ended_at is not None
    # started_at is replay time zero on the wall clock (for chat offsets).
    assert row.started_at.timestamp() == pytest.approx(recording.epoch_wall, abs=0.01)
    rows = await episodes.segments(db, recording.episode_id)
    assert row.segment_count == len(rows) == 4
    assert abs(row.duration - 4.0) < 0.05
    text = storage.read(key).decode()
    assert text.rstrip().endswith("#EXT-X-ENDLIST") and "#EXT-X-PLAYLIST-TYPE:VOD" in text
    lines = text.splitlines()
    extinf = [float(l[8:].rstrip(",")) for l in lines if l.startswith("#EXTINF:")]
    assert [round(d, 3) for d in extinf] == [round(r.duration, 3) for r in rows]
    assert all(round(d) <= 1 for d in extinf)
    assert [r.start_offset for r in rows] == sorted(r.start_offset for r in rows)
    # Keyframes were asked for at the start and then once per segment.
    assert video_keyframes.reasons.count("recorder") >= 4
    init = storage.read(f"{recording.storage_key}/init-0.mp4")
    counters = []
    for r in rows:
        counters += [c for _, c in read_segment(init, storage.read(f"{recording.storage_key}/{r.name}")).video]
    assert counters == list(range(120))
    await recorder.close()


async def test_reconnect_within_grace_continues_the_episode(db, room_factory, tmp_path):
    room = await room_factory()
    recorder = Recorder(db, LocalStorage(tmp_path), node="node-a", segment_seconds=1.0, reconnect_grace=5.0)
    recording = recorder.recording_for(room.id, room.slug)
    first = SyntheticSession(2.0, audio=False, gop_seconds=0.5)
    video = recording.add_track("video")
    for frame in first.frames:
        video.on_frame(frame)
    video.on_end()
    # The host comes back: same room, same recording, a new publication.
    assert recorder.recording_for(room.id, room.slug) is recording
    again = recording.add_track("video")
    second = SyntheticSession(2.0, audio=False, gop_seconds=0.5, arrival0=1003.0, first_index=60)
    for frame in second.frames:
        again.on_frame(frame)
    again.on_end()
    recording.end()
    await asyncio.wait_for(recording.done.wait(), 30)
    rows = await episodes.segments(db, recording.episode_id)
    row = await episodes.get(db, recording.episode_id)
    assert row.status == "ready"
    # One timeline: the 1 s away shows as the last frame held, then the new frames.
    assert row.duration == pytest.approx(5.0, abs=0.05)
    storage = recorder.storage
    decoded = []
    for r in rows:
        init = storage.read(f"{recording.storage_key}/{r.init_name}")
        decoded += read_segment(init, storage.read(f"{recording.storage_key}/{r.name}")).video
    assert [c for _, c in decoded] == list(range(120))
    resumed = next(pts for pts, c in decoded if c == 60)
    assert resumed == pytest.approx(3.0, abs=0.05)
    await recorder.close()


async def test_session_without_media_leaves_no_episode(db, room_factory, tmp_path):
    room = await room_factory()
    recorder = Recorder(db, LocalStorage(tmp_path), node="node-a", reconnect_grace=0)
    recording = recorder.recording_for(room.id, room.slug)
    sink = recording.add_track("video")
    # Only delta frames: the recorder never saw a keyframe, so nothing was captured.
    for frame in SyntheticSession(1.0, audio=False, gop_seconds=10).frames[1:]:
        sink.on_frame(frame)
    sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 30)
    assert recording.status == "deleted"
    assert await episodes.get(db, recording.episode_id) is None
    assert not (tmp_path / recording.storage_key).exists()


async def test_writer_backlog_drops_video_until_the_next_keyframe(db, room_factory, tmp_path):
    room = await room_factory()
    recorder = Recorder(db, LocalStorage(tmp_path), node="node-a", segment_seconds=1.0, reconnect_grace=0,
                        queue_size=8)
    recording = recorder.recording_for(room.id, room.slug)
    requests = KeyframeRequests()
    sink = recording.add_track("video", requests)
    dropped = ("ods_recorder_dropped_frames_total", {"kind": "video"})
    dropped_before = REGISTRY.get_sample_value(*dropped) or 0.0    # process-wide: compare with its start
    # A burst faster than the writer thread gets the GIL: the 8-slot queue overflows.
    session = SyntheticSession(3.0, audio=False, gop_seconds=0.5)
    burst, rest = session.frames[:40], session.frames[40:]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    try:
        for frame in burst:
            sink.on_frame(frame)
    finally:
        sys.setswitchinterval(interval)
    assert recording.writer.dropped > 0
    assert REGISTRY.get_sample_value(*dropped) - dropped_before == recording.writer.dropped   # on /metrics too
    assert requests.reasons.count("recorder") >= 2   # start, and after the first drop
    await wait_for(recording.writer.queue.empty, what="writer to catch up")
    for frame in rest:
        await wait_for(lambda: recording.writer.queue.qsize() < 4, what="room in the queue")
        sink.on_frame(frame)
    sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 30)
    rows = await episodes.segments(db, recording.episode_id)
    assert rows
    storage = recorder.storage
    init = storage.read(f"{recording.storage_key}/init-0.mp4")
    counters = []
    for r in rows:
        counters += [c for _, c in read_segment(init, storage.read(f"{recording.storage_key}/{r.name}")).video]
    assert counters[-1] == 89 and all(b > a for a, b in zip(counters, counters[1:]))
    # After a drop the recording resumes only at a keyframe (every 15th frame): no broken GOP.
    resumed = [b for a, b in zip(counters, counters[1:]) if b != a + 1]
    assert resumed and all(c % 15 == 0 for c in resumed)
    await recorder.close()


async def test_storage_failure_ends_the_recording_as_failed(db, room_factory, tmp_path):
    room = await room_factory()
    recorder = Recorder(db, LocalStorage(tmp_path), node="node-a", segment_seconds=1.0, reconnect_grace=30)
    recording = recorder.recording_for(room.id, room.slug)
    # The episode's directory cannot be created (a file is in the way): every write fails.
    (tmp_path / recording.storage_key).write_bytes(b"")
    sink = recording.add_track("video")
    for frame in SyntheticSession(3.0, audio=False, gop_seconds=0.5).frames:
        sink.on_frame(frame)
    # The writer thread reports the failure and the recording ends without waiting for the
    # publication to end (or the 30 s grace).
    await asyncio.wait_for(recording.done.wait(), 30)
    assert recording.writer.error is not None
    row = await episodes.get(db, recording.episode_id)
    assert row.status == "failed" and row.ended_at is not None
    assert recorder.recordings.get(room.slug) is None
    await recorder.close()


async def test_recordings_leave_no_threads_tasks_or_files_open(db, room_factory, tmp_path):
    import os
    import threading

    room = await room_factory()
    recorder = Recorder(db, LocalStorage(tmp_path), node="node-a", segment_seconds=0.5, reconnect_grace=0)
    frames = SyntheticSession(1.0, gop_seconds=0.5).frames

    async def one_session() -> None:
        recording = recorder.recording_for(room.id, room.slug)
        sinks = {"video": recording.add_track("video"), "audio": recording.add_track("audio")}
        for frame in frames:
            sinks[frame.kind].on_frame(frame)
        for sink in sinks.values():
            sink.on_end()
        await asyncio.wait_for(recording.done.wait(), 30)
        assert recording.status == "ready"

    await one_session()   # warm-up: pool connections, executor threads
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(15):
        await one_session()
    await wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("hls-writer")],
                   what="writer threads to exit")
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("recording:") and not t.done()]
    assert not recorder.recordings and not recorder._ending and not recorder._sinks
    assert len(os.listdir("/proc/self/fd")) <= fds + 2
    assert len(await episodes.for_room(db, room.id)) == 16
    await recorder.close()


async def test_app_shutdown_mid_session_finalizes_the_episode(aiohttp_client, service_urls, db, room_factory,
                                                              tmp_path):
    from conftest import make_config
    from odsmedia.app import make_app
    from recorder.recorder import RECORDER

    room = await room_factory()
    config = make_config(service_urls, tmp_path / "data", ODS_RECORDING_SEGMENT_SECONDS="1")
    client = await aiohttp_client(make_app(config))
    recorder = client.app[RECORDER]
    recording = recorder.recording_for(room.id, room.slug)
    sink = recording.add_track("video")
    for frame in SyntheticSession(2.5, audio=False, gop_seconds=0.5).frames:
        sink.on_frame(frame)
    await recording.created.wait()
    # The publisher is still live (default 10 s grace not even started) when the server stops.
    await client.close()
    assert recording.done.is_set()
    episode = await episodes.get(db, recording.episode_id)
    assert episode.status == "ready" and episode.segment_count == 3
    text = (recorder.storage.root / recording.storage_key / "index.m3u8").read_text()
    assert text.rstrip().endswith("#EXT-X-ENDLIST")


async def test_room_deleted_while_recording_takes_the_files_too(db, room_factory, tmp_path):
    room = await room_factory()
    recorder = Recorder(db, LocalStorage(tmp_path), node="node-a", segment_seconds=1.0, reconnect_grace=0)
    recording = recorder.recording_for(room.id, room.slug)
    sink = recording.add_track("video")
    frames = SyntheticSession(3.0, audio=False, gop_seconds=0.5).frames
    for frame in frames[:45]:
        sink.on_frame(frame)
    await wait_for(lambda: len(recording.listed) >= 1, what="a listed segment")
    await db.execute("DELETE FROM rooms WHERE id = $1", room.id)   # episodes and segments cascade
    for frame in frames[45:]:
        sink.on_frame(frame)
    sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 30)
    assert recording.status == "deleted"
    assert not (tmp_path / recording.storage_key).exists()
    await recorder.close()
