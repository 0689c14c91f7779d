"""Just enough ISO BMFF to cut a fragmented MP4 byte stream into HLS parts.

PyAV's mp4 muxer (``movflags=frag_keyframe+empty_moov+default_base_moof``)
writes ``ftyp`` + ``moov`` once (the HLS initialization section) and then one
``moof`` + ``mdat`` pair per fragment, starting a fragment at every video
keyframe.  ``BoxSplitter`` receives those bytes through the muxer's file
object and hands back the init section and whole fragments; ``Fragment``
carries each track's decode time range read from ``tfdt``/``trun``, which
is what the segmenter needs to decide where a segment ends.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

_HEADER = struct.Struct(">I4s")


@dataclass(frozen=True, slots=True)
class TrackSpan:
    start: int       # baseMediaDecodeTime, in the track's timescale
    duration: int    # sum of the fragment's sample durations
    samples: int
    sync: bool = True  # the first sample is a sync sample (a keyframe for video)


@dataclass(slots=True)
class Fragment:
    data: bytes
    tracks: dict[int, TrackSpan]


@dataclass(slots=True)
class MovieInfo:
    timescales: dict[int, int] = field(default_factory=dict)        # track_ID -> timescale
    default_durations: dict[int, int] = field(default_factory=dict)  # trex default_sample_duration
    default_flags: dict[int, int] = field(default_factory=dict)      # trex default_sample_flags


def iter_boxes(data: bytes | memoryview, start: int = 0, end: int | None = None):
    """(type, payload_start, box_end) for each box in ``data[start:end]``."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = _HEADER.unpack_from(data, pos)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"truncated {kind!r} box")
        yield kind, pos + header, pos + size
        pos += size


def _children(data: bytes, start: int, end: int) -> dict[bytes, list[tuple[int, int]]]:
    found: dict[bytes, list[tuple[int, int]]] = {}
    for kind, s, e in iter_boxes(data, start, end):
        found.setdefault(kind, []).append((s, e))
    return found


def parse_moov(moov: bytes) -> MovieInfo:
    """Track timescales and trex defaults from a whole ``moov`` box (header included)."""
    info = MovieInfo()
    top = _children(moov, 8, len(moov))
    for s, e in top.get(b"trak", ()):
        trak = _children(moov, s, e)
        ts, _ = trak[b"tkhd"][0]
        version = moov[ts]
        track_id = struct.unpack_from(">I", moov, ts + (20 if version == 1 else 12))[0]
        ms, me = trak[b"mdia"][0]
        mdhd_s, _ = _children(moov, ms, me)[b"mdhd"][0]
        version = moov[mdhd_s]
        info.timescales[track_id] = struct.unpack_from(">I", moov, mdhd_s + (20 if version == 1 else 12))[0]
    for s, e in top.get(b"mvex", ()):
        for ts, _ in _children(moov, s, e).get(b"trex", ()):
            track_id, _desc, duration, _size, flags = struct.unpack_from(">IIIII", moov, ts + 4)
            info.default_durations[track_id] = duration
            info.default_flags[track_id] = flags
    return info


def parse_moof(moof: bytes, movie: MovieInfo) -> dict[int, TrackSpan]:
    """Each track's decode start and total duration in one ``moof`` (header included)."""
    spans: dict[int, TrackSpan] = {}
    for s, e in _children(moof, 8, len(moof)).get(b"traf", ()):
        traf = _children(moof, s, e)
        hs, _ = traf[b"tfhd"][0]
        flags = int.from_bytes(moof[hs + 1:hs + 4], "big")
        track_id = struct.unpack_from(">I", moof, hs + 4)[0]
        pos = hs + 8
        if flags & 0x01:
            pos += 8   # base_data_offset
        if flags & 0x02:
            pos += 4   # sample_description_index
        default_duration = movie.default_durations.get(track_id, 0)
        default_flags = movie.default_flags.get(track_id, 0)
        if flags & 0x08:
            default_duration = struct.unpack_from(">I", moof, pos)[0]
            pos += 4
        if flags & 0x10:
            pos += 4   # default_sample_size
        if flags & 0x20:
            default_flags = struct.unpack_from(">I", moof, pos)[0]
        first_flags: int | None = None
        start = 0
        if b"tfdt" in traf:
            ds, _ = traf[b"tfdt"][0]
            start = struct.unpack_from(">Q" if moof[ds] == 1 else ">I", moof, ds + 4)[0]
        total = 0
        count = 0
        for rs, _ in traf.get(b"trun", ()):
            tr_flags = int.from_bytes(moof[rs + 1:rs + 4], "big")
            samples = struct.unpack_from(">I", moof, rs + 4)[0]
            pos = rs + 8
            if tr_flags & 0x001:
                pos += 4   # data_offset
            if tr_flags & 0x004:
                if first_flags is None:
                    first_flags = struct.unpack_from(">I", moof, pos)[0]
                pos += 4
            per_sample = 4 * bin(tr_flags & 0xF00).count("1")
            if first_flags is None and samples and tr_flags & 0x400:
                # The flags field follows the duration and size fields when present.
                offset = 4 * bin(tr_flags & 0x300).count("1")
                first_flags = struct.unpack_from(">I", moof, pos + offset)[0]
            if tr_flags & 0x100:
                for i in range(samples):
                    total += struct.unpack_from(">I", moof, pos + i * per_sample)[0]
            else:
                total += default_duration * samples
            count += samples
        if first_flags is None:
            first_flags = default_flags
        # sample_is_non_sync_sample is bit 16 of the sample flags (ISO/IEC 14496-12 8.8.3.1).
        spans[track_id] = TrackSpan(start, total, count, not first_flags & 0x10000)
    return spans


class BoxSplitter:
    """File-like sink for the muxer: collects the init section and whole fragments."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.init: bytes | None = None
        self.movie: MovieInfo | None = None
        self._init_parts: list[bytes] = []
        self._moof: bytes | None = None
        self.fragments: list[Fragment] = []

    def write(self, data) -> int:
        self._buffer += data
        self._drain()
        return len(data)

    def _drain(self) -> None:
        buf = self._buffer
        pos = 0
        while len(buf) - pos >= 8:
            size, kind = _HEADER.unpack_from(buf, pos)
            if size == 1:
                if len(buf) - pos < 16:
                    break
                size = struct.unpack_from(">Q", buf, pos + 8)[0]
            if size < 8 or len(buf) - pos < size:
                break
            self._box(kind, bytes(buf[pos:pos + size]))
            pos += size
        if pos:
            del buf[:pos]

    def _box(self, kind: bytes, box: bytes) -> None:
        if kind in (b"ftyp", b"moov"):
            self._init_parts.append(box)
            if kind == b"moov":
                self.init = b"".join(self._init_parts)
                self.movie = parse_moov(box)
        elif kind == b"moof":
            self._moof = box
        elif kind == b"mdat" and self._moof is not None:
            assert self.movie is not None
            self.fragments.append(Fragment(self._moof + box, parse_moof(self._moof, self.movie)))
            self._moof = None
        # Anything else (mfra, free) carries nothing a segment needs.

    def take(self) -> list[Fragment]:
        fragments, self.fragments = self.fragments, []
        return fragments
