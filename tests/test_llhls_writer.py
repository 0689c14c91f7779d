"""The writer in LL-HLS parts mode: parts are the segment's bytes, cut at keyframes."""

from __future__ import annotations

from recorder.storage import LocalStorage
from test_recorder_writer import record
from testsupport.synthetic import SyntheticSession, read_segment


def record_parts(storage, frames, *, segment_seconds, part_seconds):
    parts = []
    _, segments = record(storage, frames, segment_seconds=segment_seconds, on_part=parts.append,
                         part_seconds=part_seconds)
    return segments, parts


def test_parts_concatenate_to_segments_and_each_decodes(tmp_path):
    storage = LocalStorage(tmp_path)
    # Keyframes every 2 s, parts of 0.5 s, segments of 4 s.
    session = SyntheticSession(9.0, gop_seconds=2.0, audio_start=0.0, jitter=0.0)
    segments, parts = record_parts(storage, session.frames, segment_seconds=4.0, part_seconds=0.5)
    assert [s.seq for s in segments] == [1, 2, 3]
    init = storage.read("ep/init-0.mp4")
    counters = []
    for segment in segments:
        mine = [p for p in parts if p.seq == segment.seq]
        assert [p.index for p in mine] == list(range(len(mine)))
        # One write: the stored segment is exactly its parts, in order.
        assert storage.read(f"ep/{segment.name}") == b"".join(p.data for p in mine)
        # A segment begins with a keyframe; its parts are about half a second each.
        assert mine[0].independent
        assert all(p.duration <= 0.5 + 0.04 for p in mine)
        assert len(mine) >= 2 * round(segment.duration) - 1
        for part in mine:
            decoded = read_segment(init, part.data) if part.independent else None
            if decoded is not None:
                assert decoded.video[0][1] % 60 == 0        # starts on a keyframe (every 60 frames)
        counters += [c for _, c in read_segment(init, storage.read(f"ep/{segment.name}")).video]
    # Parts that begin with a keyframe are marked independent, exactly those.
    assert sum(p.independent for p in parts) == 5           # keyframes at 0, 2, 4, 6, 8 s
    assert counters == list(range(int(9.0 * 30)))
    assert [round(s.duration, 3) for s in segments[:2]] == [4.0, 4.0]
