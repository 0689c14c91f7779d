"""Placing one track's frames on the episode timeline.

Time alignment is by arrival: each track's first frame is pinned to its
arrival time relative to the episode's first frame, and later frames follow
their own RTP clock from there, so audio and video (separate publications
with separate RTP clocks) line up without the RTCP sender-report mapping
aiortc does not expose.
"""

from __future__ import annotations

from odsmedia.media.frame import MediaFrame

# An RTP clock this far from the arrival clock has jumped (encoder restart, a
# misread wrap), not drifted: the track is re-anchored to its arrival time.
RESYNC_SECONDS = 5


class TrackClock:
    """Maps one publication's RTP timestamps onto the episode timeline."""

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset: int | None = None

    def pts(self, frame: MediaFrame, epoch: float) -> int:
        rate = frame.clock_rate
        expected = round((frame.arrival - epoch) * rate)
        if self.offset is None or abs(self.offset + frame.timestamp - expected) > RESYNC_SECONDS * rate:
            self.offset = expected - frame.timestamp
        return self.offset + frame.timestamp
