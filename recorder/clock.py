"""Placing one track's frames on the episode timeline.

The episode's time zero is the arrival of its first frame.  Each track is
placed once (its RTP offset fixed) and later frames follow their own RTP
clock, so nothing drifts within a track.  How the first placement is made:

* **Sender reports** (RTCP SR, the publisher's NTP<->RTP mapping): every
  track of one publisher shares that publisher's capture clock, so its
  tracks (camera, screen, microphone) line up as captured whatever the
  network did to each.  The publisher's NTP clock is pinned to the episode
  timeline once (``SenderClock``), by the arrival of the first frame placed
  that way; each of its tracks is then placed by NTP time.
* **Arrival** otherwise (no report came within ``SR_WAIT`` of the track's
  first frame): the first frame sits at its arrival time relative to the
  epoch.  The residual error is the difference of the paths' latency.

Publishers (co-hosts) have unrelated NTP clocks: each is pinned by arrival
once, so two people's sources line up to within their latency difference.
"""

from __future__ import annotations

from odsmedia.media.frame import MediaFrame

# An RTP clock this far from the arrival clock has jumped (encoder restart, a
# misread wrap), not drifted: the track is re-anchored to its arrival time.
RESYNC_SECONDS = 5
# How long a new track's frames are held waiting for its publisher's first sender
# report (aiortc sends one every 0.5-1.5 s, browsers about every second).
SR_WAIT = 2.0

SenderReport = tuple[int, int]     # (NTP 64-bit fixed point, RTP timestamp on the frames' scale)


def ntp_seconds(ntp: int) -> float:
    return (ntp >> 32) + (ntp & 0xFFFFFFFF) / 4294967296.0


class SenderClock:
    """One publisher's NTP clock pinned to the episode timeline (seconds, episode - NTP)."""

    __slots__ = ("anchor",)

    def __init__(self) -> None:
        self.anchor: float | None = None


class TrackClock:
    """Maps one publication's RTP timestamps onto the episode timeline."""

    __slots__ = ("offset", "by_report")

    def __init__(self) -> None:
        self.offset: int | None = None
        self.by_report = False          # placed by a sender report (else by arrival)

    def place(self, frame: MediaFrame, epoch: float, report: SenderReport | None, sender: SenderClock) -> None:
        """Fix the track's offset from this frame: by ``report`` when given, else by arrival."""
        rate = frame.clock_rate
        arrival = frame.arrival - epoch
        if report is not None:
            ntp = ntp_seconds(report[0]) + (frame.timestamp - report[1]) / rate
            if sender.anchor is None:
                sender.anchor = arrival - ntp
            at = ntp + sender.anchor
            if abs(at - arrival) <= RESYNC_SECONDS:
                self.offset = round(at * rate) - frame.timestamp
                self.by_report = True
                return
        self.offset = round(arrival * rate) - frame.timestamp
        self.by_report = False

    def pts(self, frame: MediaFrame, epoch: float) -> int:
        rate = frame.clock_rate
        expected = round((frame.arrival - epoch) * rate)
        if self.offset is None or abs(self.offset + frame.timestamp - expected) > RESYNC_SECONDS * rate:
            self.offset = expected - frame.timestamp
            self.by_report = False
        return self.offset + frame.timestamp
