"""Every source of a session is recorded: one rendition per video source, lined up by sender reports."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from recorder import episodes
from recorder.clock import SR_WAIT
from recorder.recorder import Recorder
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
