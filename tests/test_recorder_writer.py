"""The HLS writer alone: synthetic H.264 + Opus in, segments decoded back with PyAV."""

from __future__ import annotations

import io
import re

import av
import pytest

from recorder.clock import TrackClock
from recorder.codecs import h264_parameter_sets, opus_samples
from recorder.fmp4 import iter_boxes
from recorder.hls import HlsWriter, Sample
from recorder.playlist import Playlist, PlaylistEntry
from recorder.storage import LocalStorage, StorageError
from testsupport.synthetic import SyntheticSession, read_segment


def record(storage, frames, *, segment_seconds=2.0, key="ep", queue_size=4096, clocks=None, epoch=None,
           **options):
    """Feed MediaFrames through the arrival-time clock into a writer (``options``: more HlsWriter
    arguments, e.g. LL-HLS parts); returns (writer, segments)."""
    segments = []
    writer = HlsWriter(storage, key, segment_seconds=segment_seconds, on_segment=segments.append,
                       queue_size=queue_size, **options)
    writer.start()
    clocks = clocks if clocks is not None else {}
    epoch = frames[0].arrival if epoch is None else epoch
    for frame in frames:
        clock = clocks.setdefault(frame.kind, TrackClock())
        assert writer.put(Sample(frame.kind, frame.codec, frame.data, clock.pts(frame, epoch),
                                 frame.clock_rate, frame.keyframe))
    writer.finish()
    writer.join(30)
    assert not writer.thread.is_alive()
    assert writer.error is None
    return writer, segments


def decode_all(storage, key, segments):
    decoded = []
    for segment in segments:
        init = storage.read(f"{key}/{segment.init}")
        decoded.append(read_segment(init, storage.read(f"{key}/{segment.name}")))
    return decoded


def av_offsets(decoded, fps=30):
    """Audio beep onset minus the display time of the frame captured at the same second."""
    video = {counter: pts for d in decoded for pts, counter in d.video}
    offsets = []
    for d in decoded:
        for onset in d.audio_onsets:
            second = round(onset)
            if second * fps in video:
                offsets.append(onset - video[second * fps])
    return offsets


def test_segments_decode_without_counter_gaps_and_audio_in_sync(tmp_path):
    storage = LocalStorage(tmp_path)
    session = SyntheticSession(9.0, gop_seconds=1.0, audio_start=0.35, jitter=0.01)
    writer, segments = record(storage, session.frames, segment_seconds=2.0)

    assert [s.seq for s in segments] == list(range(1, len(segments) + 1))
    # Cut at keyframes (every 1 s) once 2 s are reached: 2 s segments, a shorter last one.
    assert [round(s.duration, 3) for s in segments[:-1]] == [2.0] * (len(segments) - 1)
    assert 0 < segments[-1].duration <= 2.0 + 1e-6
    assert all(b.start == pytest.approx(a.start + a.duration) for a, b in zip(segments, segments[1:]))
    assert all(re.fullmatch(r"\d{5}-0\.m4s", s.name) for s in segments)

    decoded = decode_all(storage, "ep", segments)
    counters = [c for d in decoded for _, c in d.video]
    assert counters == list(range(int(9.0 * 30)))
    for d in decoded:
        assert d.video and d.audio_pts
        # Each segment starts on a keyframe: its first frame decodes on its own.
        assert d.video[0][1] % 30 == 0
    video_pts = [p for d in decoded for p in d.video_pts]
    audio_pts = [p for d in decoded for p in d.audio_pts]
    assert all(b > a for a, b in zip(video_pts, video_pts[1:]))
    assert all(b > a for a, b in zip(audio_pts, audio_pts[1:]))
    offsets = av_offsets(decoded)
    assert len(offsets) >= 7
    assert max(abs(o) for o in offsets) < 0.1, offsets
    # The audio track starts with the video (silence until the mic's first packet).
    assert decoded[0].audio_start == pytest.approx(0.0, abs=0.03)


def test_sparse_keyframes_make_longer_segments_and_frequent_ones_group(tmp_path):
    storage = LocalStorage(tmp_path)
    _, segments = record(storage, SyntheticSession(8.0, gop_seconds=0.5, audio=False).frames,
                         segment_seconds=2.0, key="a")
    assert [round(s.duration, 3) for s in segments] == [2.0, 2.0, 2.0, 2.0]
    _, segments = record(storage, SyntheticSession(9.0, gop_seconds=3.0, audio=False).frames,
                         segment_seconds=2.0, key="b")
    # No keyframe at 2 s: the segment runs to the next one (3 s) instead of breaking a GOP.
    assert [round(s.duration, 3) for s in segments] == [3.0, 3.0, 3.0]
    playlist = Playlist(2.0, [PlaylistEntry(s.name, s.duration, s.init) for s in segments], ended=True)
    assert "#EXT-X-TARGETDURATION:3" in playlist.render()


def test_mute_gap_is_filled_with_silence_and_reconnect_starts_a_new_period(tmp_path):
    storage = LocalStorage(tmp_path)
    first = SyntheticSession(4.0, gop_seconds=1.0, arrival0=1000.0, seed=1)
    # The host reconnects 1.5 s later at another resolution: new publications, RTP clocks from 0.
    second = SyntheticSession(4.0, gop_seconds=1.0, arrival0=1005.5, width=352, height=192,
                              first_index=165, seed=2)
    # Audio muted across a segment boundary (the SFU stops forwarding it).
    frames = [f for f in first.frames if not (f.kind == "audio" and 1001.5 < f.arrival < 1003.2)]
    clocks: dict = {}
    segments = []
    writer = HlsWriter(storage, "ep", segment_seconds=2.0, on_segment=segments.append)
    writer.start()
    epoch = frames[0].arrival
    for part in (frames, second.frames):
        clocks = {}
        for frame in part:
            clock = clocks.setdefault(frame.kind, TrackClock())
            writer.put(Sample(frame.kind, frame.codec, frame.data, clock.pts(frame, epoch),
                              frame.clock_rate, frame.keyframe))
    writer.finish()
    writer.join(30)
    assert writer.error is None

    periods = [int(s.name.split("-")[1].split(".")[0]) for s in segments]
    assert periods[0] == 0 and periods[-1] == 1
    restart = periods.index(1)
    assert segments[restart].discontinuity and segments[restart].init == "init-1.mp4"
    assert not any(s.discontinuity for i, s in enumerate(segments) if i != restart)
    decoded = decode_all(storage, "ep", segments)
    counters = [c for d in decoded for _, c in d.video]
    assert counters == list(range(120)) + list(range(165, 165 + 120))
    for d in decoded:
        audio = d.audio_pts
        # Continuous audio: no hole longer than one packet, even across the mute,
        # and each segment carries audio for the whole span of its video.
        assert all(0 < b - a <= 0.0201 for a, b in zip(audio, audio[1:]))
        assert audio[0] <= d.video_pts[0] + 0.03 and audio[-1] >= d.video_pts[-1] - 0.03
    assert segments[restart].start == pytest.approx(5.5, abs=0.05)
    # Decode times restart with the period (the discontinuity tells players).
    assert decoded[restart].video[0][0] == pytest.approx(0.0, abs=0.05)
    offsets = av_offsets(decoded)
    assert offsets and max(abs(o) for o in offsets) < 0.1


def test_audio_only_session_is_cut_on_time(tmp_path):
    storage = LocalStorage(tmp_path)
    _, segments = record(storage, SyntheticSession(7.0, video=False, audio_start=0.0).frames,
                         segment_seconds=2.0)
    assert len(segments) >= 3
    assert all(1.5 <= s.duration <= 2.5 for s in segments[:-1])
    decoded = decode_all(storage, "ep", segments)
    assert all(d.audio_pts and not d.video for d in decoded)


def test_init_section_and_segments_are_whole_mp4_boxes(tmp_path):
    storage = LocalStorage(tmp_path)
    _, segments = record(storage, SyntheticSession(3.0).frames, segment_seconds=2.0)
    init = storage.read("ep/init-0.mp4")
    assert [kind for kind, _, _ in iter_boxes(init)] == [b"ftyp", b"moov"]
    for segment in segments:
        kinds = [kind for kind, _, _ in iter_boxes(storage.read(f"ep/{segment.name}"))]
        assert kinds[0] == b"moof" and set(kinds) == {b"moof", b"mdat"}
    # Nothing half-written is left behind.
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_storage_keys_cannot_escape_and_puts_are_atomic(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    for bad in ("../x", "a/../../b", "/etc/passwd", "a//b", ".hidden", "a/.x.partial", ""):
        with pytest.raises(StorageError):
            storage.put(bad, b"x")
    storage.put("ep/file.m4s", b"one")
    storage.put("ep/file.m4s", b"two")
    assert storage.read("ep/file.m4s") == b"two"
    assert storage.read("ep/file.m4s", 1, 1) == b"w"
    assert storage.list("ep") == ["file.m4s"]
    (tmp_path / "root" / "ep" / ".file.m4s.1234.partial").write_bytes(b"half")
    assert storage.list("ep") == ["file.m4s"]
    assert storage.discard_partials("ep") == 1
    storage.delete_prefix("ep")
    assert storage.size("ep/file.m4s") is None


def test_bitstream_helpers():
    session = SyntheticSession(0.2, audio=False)
    keyframe = session.frames[0].data
    params = h264_parameter_sets(keyframe)
    assert params and params[0] & 0x1F == 7
    assert h264_parameter_sets(session.frames[1].data) == b""
    assert opus_samples(b"\xf8\xff\xfe") == 960          # CELT 20 ms
    assert opus_samples(bytes([0x08 << 3 | 1])) == 2 * 480   # SILK 10 ms, two frames
    assert opus_samples(bytes([(17 << 3) | 3, 3])) == 3 * 240  # CELT 5 ms, three frames


def test_vp8_source_is_transcoded_once_to_playable_h264(tmp_path):
    storage = LocalStorage(tmp_path)
    session = SyntheticSession(5.0, video_codec="VP8", gop_seconds=1.0, audio_start=0.3)
    _, segments = record(storage, session.frames, segment_seconds=2.0)
    assert [round(s.duration, 3) for s in segments] == [2.0, 2.0, 1.0]
    decoded = decode_all(storage, "ep", segments)
    counters = [c for d in decoded for _, c in d.video]
    assert counters == list(range(150))
    offsets = av_offsets(decoded)
    assert offsets and max(abs(o) for o in offsets) < 0.1
    init = storage.read("ep/init-0.mp4")
    assert b"avc1" in init and b"Opus" in init
    # What a player opens is H.264, whatever the source was.
    with av.open(io.BytesIO(init + storage.read(f"ep/{segments[0].name}"))) as container:
        assert container.streams.video[0].codec_context.name == "h264"


def test_audio_joining_a_video_only_period_restarts_at_the_next_keyframe(tmp_path):
    storage = LocalStorage(tmp_path)
    # The mic is switched on 2.6 s into the session (well past the start wait).
    session = SyntheticSession(6.0, gop_seconds=1.0, audio_start=2.6)
    wanted = []
    segments = []
    writer = HlsWriter(storage, "ep", segment_seconds=2.0, on_segment=segments.append,
                       on_keyframe_wanted=lambda: wanted.append(1))
    writer.start()
    clocks: dict = {}
    epoch = session.frames[0].arrival
    for frame in session.frames:
        clock = clocks.setdefault(frame.kind, TrackClock())
        writer.put(Sample(frame.kind, frame.codec, frame.data, clock.pts(frame, epoch), frame.clock_rate,
                          frame.keyframe))
    writer.finish()
    writer.join(30)
    assert writer.error is None and wanted
    decoded = decode_all(storage, "ep", segments)
    # No video frame is lost while waiting for the keyframe that opens the audio period.
    assert [c for d in decoded for _, c in d.video] == list(range(180))
    assert not decoded[0].audio_pts and decoded[-1].audio_pts
    restart = next(i for i, s in enumerate(segments) if s.discontinuity)
    assert segments[restart].start == pytest.approx(3.0, abs=0.02)


def test_aac_audio_option_transcodes_opus_and_keeps_sync(tmp_path):
    storage = LocalStorage(tmp_path)
    session = SyntheticSession(6.0, gop_seconds=1.0, audio_start=0.3, jitter=0.01)
    segments = []
    writer = HlsWriter(storage, "ep", segment_seconds=2.0, on_segment=segments.append, audio_codec="aac")
    writer.start()
    clocks: dict = {}
    epoch = session.frames[0].arrival
    for frame in session.frames:
        clock = clocks.setdefault(frame.kind, TrackClock())
        writer.put(Sample(frame.kind, frame.codec, frame.data, clock.pts(frame, epoch), frame.clock_rate,
                          frame.keyframe))
    writer.finish()
    writer.join(30)
    assert writer.error is None
    init = storage.read("ep/init-0.mp4")
    assert b"mp4a" in init and b"Opus" not in init
    decoded = []
    for segment in segments:
        d = read_segment(init, storage.read(f"ep/{segment.name}"))
        decoded.append(d)
        assert d.audio_pts and all(b > a for a, b in zip(d.audio_pts, d.audio_pts[1:]))
    assert [c for d in decoded for _, c in d.video] == list(range(180))
    offsets = av_offsets(decoded)
    assert len(offsets) >= 5 and max(abs(o) for o in offsets) < 0.1, offsets


def test_rtp_timestamp_jump_is_reanchored_to_arrival_time(tmp_path):
    from dataclasses import replace

    storage = LocalStorage(tmp_path)
    session = SyntheticSession(6.0, gop_seconds=1.0)
    # Half way, the video's RTP clock leaps by 2^32 (a wrap misread upstream) and the
    # audio's goes back by an hour (an encoder restart): arrival times carry on as usual.
    frames = []
    for frame in session.frames:
        if frame.arrival >= 1003.0:
            frame = replace(frame, timestamp=frame.timestamp + (1 << 32) if frame.kind == "video"
                            else frame.timestamp - 3600 * 48000)
        frames.append(frame)
    _, segments = record(storage, frames, segment_seconds=2.0)
    assert [round(s.duration, 2) for s in segments] == [2.0, 2.0, 2.0]
    decoded = decode_all(storage, "ep", segments)
    assert [c for d in decoded for _, c in d.video] == list(range(180))
    offsets = av_offsets(decoded)
    assert len(offsets) >= 5 and max(abs(o) for o in offsets) < 0.1, offsets
