"""The live Low-Latency HLS media playlist of one episode (RFC 8216bis).

While a session is live the writer hands each part (a run of whole fMP4
fragments, about ``part_seconds`` long) to a ``LivePlaylist``; a segment is
the concatenation of its parts, so the parts are the segment's own bytes and
nothing is written twice.  The playlist lists closed segments with their
parts, the open segment's parts so far, and an EXT-X-PRELOAD-HINT for the
next part.

Blocking playlist reload (``_HLS_msn`` / ``_HLS_part``) waits on
``wait_for``: every ``add_part`` wakes the waiters, so a request for the next
part is answered as soon as that part exists.  ``BlockingRequest.parse``
applies the spec's 400 rules; a request still unsatisfied after three target
durations gets 503 (the caller turns ``PlaylistTimeout`` into that).

``render(skip=True)`` produces a delta update (EXT-X-SKIP) that leaves out the
segments older than CAN-SKIP-UNTIL (six target durations) from the end.
When the session ends the same entries render as the VOD playlist.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

# RFC 8216bis 6.2.5.2: a request for a segment more than this far past the last
# one, or a part more than the Advance Part Limit past the last part, is a 400.
MSN_ADVANCE_LIMIT = 2
ADVANCE_PART_LIMIT = 3
# Blocking requests are answered (503) after this many target durations.
BLOCK_TIMEOUT_TARGETS = 3
# CAN-SKIP-UNTIL is at least six target durations (RFC 8216bis 4.4.3.8).
SKIP_TARGETS = 6


class PlaylistRequestError(ValueError):
    """A malformed or out-of-range _HLS_* query: HTTP 400 with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PlaylistTimeout(Exception):
    """A blocking reload was not satisfied in time (HTTP 503)."""


def part_name(seq: int, period: int, index: int) -> str:
    # Same stem as the segment (``hls.segment_name``) so the origin can tell which
    # segment a part belongs to; a URL of its own so a CDN caches it as a whole object.
    return f"{seq:05d}-{period}.{index}.m4s"


@dataclass(frozen=True, slots=True)
class Part:
    uri: str
    duration: float
    independent: bool      # begins with a video keyframe


@dataclass(slots=True)
class Segment:
    msn: int
    uri: str
    init: str | None
    discontinuity: bool
    program_date_time: datetime
    parts: list[Part] = field(default_factory=list)
    duration: float = 0.0
    closed: bool = False


@dataclass(frozen=True, slots=True)
class BlockingRequest:
    msn: int | None
    part: int | None
    skip: bool

    @classmethod
    def parse(cls, query, playlist: "LivePlaylist") -> "BlockingRequest":
        """The _HLS_msn / _HLS_part / _HLS_skip of ``query`` (a mapping), checked."""
        msn = _number(query, "_HLS_msn")
        part = _number(query, "_HLS_part")
        skip_value = query.get("_HLS_skip")
        if skip_value not in (None, "YES", "v2"):
            raise PlaylistRequestError("bad_hls_skip")
        if part is not None and msn is None:
            raise PlaylistRequestError("hls_part_without_msn")
        if msn is not None and not playlist.ended:
            last_msn, last_part = playlist.last_position()
            if msn > last_msn + MSN_ADVANCE_LIMIT:
                raise PlaylistRequestError("hls_msn_too_far_ahead")
            if part is not None and msn == last_msn + 1 and part > last_part + ADVANCE_PART_LIMIT:
                raise PlaylistRequestError("hls_part_too_far_ahead")
            if part is not None and msn == last_msn and part > last_part + 1 + ADVANCE_PART_LIMIT:
                raise PlaylistRequestError("hls_part_too_far_ahead")
        return cls(msn, part, skip_value is not None)


def _number(query, name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    # Decimal-integer only (ASCII digits, bounded length): "+1", "1.0", "-1", "١" are 400s.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 10:
        raise PlaylistRequestError(f"bad_{name.lower().lstrip('_')}")
    return int(raw)


class LivePlaylist:
    """Segments and parts of one live episode, and the waiters for the next ones."""

    def __init__(self, *, target: float, part_target: float, first_msn: int = 1) -> None:
        self.target = target
        self.part_target = part_target
        self.first_msn = first_msn
        self.segments: list[Segment] = []
        self.ended = False
        self._changed = asyncio.Event()
        # The rendered text per variant (full, delta) until the next change: a thousand
        # pollers woken by one part get the same bytes, rendered once.
        self._rendered: dict[bool, str] = {}

    # --- the writer's side (on the event loop) -------------------------------------------------

    def add_part(
        self, *, msn: int, segment_uri: str, part_uri: str, duration: float, independent: bool,
        init: str | None, discontinuity: bool, program_date_time: datetime,
    ) -> None:
        segment = self.segments[-1] if self.segments else None
        if segment is None or segment.closed:
            if segment is not None and msn != segment.msn + 1:
                raise ValueError(f"segment {msn} does not follow {segment.msn}")
            segment = Segment(msn, segment_uri, init, discontinuity, program_date_time)
            self.segments.append(segment)
        elif segment.msn != msn:
            raise ValueError(f"part of segment {msn} while {segment.msn} is open")
        segment.parts.append(Part(part_uri, duration, independent))
        segment.duration += duration
        self._wake()

    def close_segment(self, msn: int, duration: float) -> None:
        segment = self.segments[-1]
        if segment.msn != msn or segment.closed:
            raise ValueError(f"segment {msn} is not the open one")
        segment.duration = duration
        segment.closed = True
        self._wake()

    def end(self) -> None:
        if self.segments and not self.segments[-1].closed:
            # An open segment with no more parts to come: it ends where its parts end.
            self.segments[-1].closed = True
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        self._rendered.clear()
        self._changed.set()
        self._changed = asyncio.Event()

    # --- the origin's side ---------------------------------------------------------------------

    def last_position(self) -> tuple[int, int]:
        """(msn, part index) of the newest part; (first_msn - 1, -1) before any."""
        if not self.segments:
            return self.first_msn - 1, -1
        last = self.segments[-1]
        return last.msn, len(last.parts) - 1

    def satisfies(self, msn: int, part: int | None) -> bool:
        """Whether the playlist holds segment ``msn`` (or its part ``part``)."""
        if self.ended:
            return True
        for segment in reversed(self.segments):
            if segment.msn > msn:
                return True          # a later segment exists: ``msn`` is complete
            if segment.msn == msn:
                if part is None:
                    return segment.closed
                return segment.closed or len(segment.parts) > part
            return False
        return False

    async def wait_for(self, msn: int, part: int | None, timeout: float | None = None) -> None:
        timeout = BLOCK_TIMEOUT_TARGETS * self.target if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.satisfies(msn, part):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PlaylistTimeout(f"segment {msn} part {part} not available")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                raise PlaylistTimeout(f"segment {msn} part {part} not available") from None

    @property
    def target_duration(self) -> int:
        longest = max((round(s.duration) for s in self.segments if s.closed), default=0)
        return max(1, math.ceil(self.target - 1e-6), longest)

    def render(self, *, skip: bool = False) -> str:
        text = self._rendered.get(skip)
        if text is None:
            text = self._rendered[skip] = self._render(skip)
        return text

    def _render(self, skip: bool) -> str:
        target = self.target_duration
        skip_until = SKIP_TARGETS * target
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:9",
            f"#EXT-X-TARGETDURATION:{target}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.first_msn}",
        ]
        if self.ended:
            lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
        else:
            # PART-HOLD-BACK: at least three part target durations (RFC 8216bis 4.4.3.8).
            lines.append(
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
                f"CAN-SKIP-UNTIL={skip_until:.1f},PART-HOLD-BACK={3 * self.part_target:.3f}")
            lines.append(f"#EXT-X-PART-INF:PART-TARGET={self.part_target:.3f}")
        lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
        skipped = 0
        if skip and not self.ended:
            # Leave out whole segments that start more than skip_until before the end.
            total = sum(s.duration for s in self.segments)
            elapsed = 0.0
            for segment in self.segments:
                if not segment.closed or total - elapsed <= skip_until:
                    break
                if total - (elapsed + segment.duration) < skip_until:
                    break
                elapsed += segment.duration
                skipped += 1
            if skipped:
                # The first listed segment keeps its Discontinuity Sequence Number: the
                # publisher restarts among the skipped segments are counted, not listed.
                restarts = sum(1 for s in self.segments[1:skipped] if s.discontinuity)
                if restarts:
                    lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{restarts}")
                lines.append(f"#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}")
        # Parts are listed only for the recent segments (RFC 8216bis: at least the
        # last three target durations); older segments appear as plain segments.
        parts_from = self._parts_horizon()
        current_map = None
        for index, segment in enumerate(self.segments):
            if index < skipped:
                continue
            if segment.discontinuity and index:
                lines.append("#EXT-X-DISCONTINUITY")
            if segment.init is not None and segment.init != current_map:
                lines.append(f'#EXT-X-MAP:URI="{segment.init}"')
                current_map = segment.init
            lines.append("#EXT-X-PROGRAM-DATE-TIME:" + _iso(segment.program_date_time))
            if not self.ended and index >= parts_from:
                for part in segment.parts:
                    attrs = f'DURATION={part.duration:.5f},URI="{part.uri}"'
                    if part.independent:
                        attrs += ",INDEPENDENT=YES"
                    lines.append(f"#EXT-X-PART:{attrs}")
            if segment.closed:
                lines.append(f"#EXTINF:{segment.duration:.6f},")
                lines.append(segment.uri)
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        elif self.segments:
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{self._next_part_uri()}"')
        return "\n".join(lines) + "\n"

    def _parts_horizon(self) -> int:
        horizon = 3 * self.target_duration
        elapsed = 0.0
        for index in range(len(self.segments) - 1, -1, -1):
            elapsed += self.segments[index].duration
            if elapsed > horizon:
                return index
        return 0

    def _next_part_uri(self) -> str:
        last = self.segments[-1]
        stem, period = last.uri.removesuffix(".m4s").split("-")
        if last.closed:
            return part_name(last.msn + 1, int(period), 0)
        return part_name(last.msn, int(period), len(last.parts))


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
