"""Publication: one track a participant publishes, fanned out to sinks.

Live viewers are served packet by packet: the receiver's packet tap feeds
``fanout`` (media.forwarder.PacketFanout), which rewrites and sends each
packet to every Subscription's Downstream.  Frames still exist once per
publication: the receiver's frame tap calls ``deliver`` with every encoded
frame, and the publication hands it to each frame sink (the recorder, and
Subscriptions when ``media.forwarding = "frame"``).  Sinks must not block:
they queue and return.  Keyframe requests from every sink meet here and reach the publisher at most once per
``pli_interval``; a request inside the interval is folded into one trailing
request so a late joiner never waits on a lost PLI.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, Callable

from ..media.forwarder import PacketFanout
from ..media.frame import MediaFrame, Sink
from ..media.rtp import timestamp_delta

if TYPE_CHECKING:
    from aiortc import RTCRtpCodecParameters

    from .participant import Participant

__all__ = ["MediaFrame", "Publication", "Sink"]

log = logging.getLogger("odsmedia.sfu")


class Publication:
    def __init__(
        self,
        participant: "Participant",
        kind: str,
        codec: "RTCRtpCodecParameters",
        *,
        source: str,
        pli_interval: float = 0.5,
        request_pli: Callable[[], None] | None = None,
    ) -> None:
        self.id = "PU" + secrets.token_hex(5)
        self.participant = participant
        self.kind = kind
        self.codec = codec                      # negotiated with the publisher; subscribers get the same
        self.codec_name = codec.name
        self.source = source
        self._muted = False                     # by its owner
        self._moderator_muted = False
        self.ended = False
        # The packet forward path (media.forwarding = "packet"): fed by the receiver's packet tap.
        self.fanout = PacketFanout(kind, codec.name, codec.clockRate, request_keyframe=self.request_keyframe)
        self.frames = 0
        self.keyframes_requested = 0
        self._sinks: list[Sink] = []
        self._pli_interval = pli_interval
        self._request_pli = request_pli
        self._last_pli = -1e9
        self._trailing: asyncio.TimerHandle | None = None
        # The publisher's latest RTCP sender report (NTP, RTP as sent) for this track: what
        # lines up its tracks in the recording.  None until the first one.
        self._sender_report: tuple[int, int] | None = None
        # The RTP timestamp frame timestamps count from (the receiver's; None before a frame).
        self.frame_timestamp_origin: Callable[[], int | None] = lambda: None

    # --- sinks ------------------------------------------------------------------------------

    def add_sink(self, sink: Sink) -> None:
        if self.ended:
            sink.on_end()
            return
        if sink not in self._sinks:
            # Copy on write: deliver() iterates the list without guarding against edits.
            self._sinks = [*self._sinks, sink]

    def remove_sink(self, sink: Sink) -> None:
        if sink in self._sinks:
            self._sinks = [s for s in self._sinks if s is not sink]

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return tuple(self._sinks)

    @property
    def muted(self) -> bool:
        return self._muted

    @muted.setter
    def muted(self, value: bool) -> None:
        self._muted = value
        self.fanout.pause(not self.forwarding)

    @property
    def moderator_muted(self) -> bool:
        return self._moderator_muted

    @moderator_muted.setter
    def moderator_muted(self, value: bool) -> None:
        self._moderator_muted = value
        self.fanout.pause(not self.forwarding)

    @property
    def forwarding(self) -> bool:
        return not (self.muted or self.moderator_muted or self.ended)

    def deliver(self, frame: MediaFrame) -> None:
        """Hot path: called by the receiver hook for every encoded frame."""
        self.frames += 1
        if self.muted or self.moderator_muted:
            return
        for sink in self._sinks:
            try:
                sink.on_frame(frame)
            except Exception:
                log.exception("sink failed; removed", extra={"publication": self.id})
                self.remove_sink(sink)

    def end(self) -> None:
        """The publisher is gone: tell every sink once."""
        if self.ended:
            return
        self.ended = True
        self.fanout.end()
        if self._trailing is not None:
            self._trailing.cancel()
            self._trailing = None
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            try:
                sink.on_end()
            except Exception:
                log.exception("sink on_end failed", extra={"publication": self.id})

    def on_sender_report(self, ssrc: int, ntp: int, rtp_timestamp: int) -> None:
        """An RTCP SR from the publisher (receiver tap): kept for the recorder, passed to the fan-out."""
        if ntp:
            # aiortc reports NTP 0 until its first RTP packet: no mapping in that one.
            self._sender_report = (ntp, rtp_timestamp)
        self.fanout.on_sender_report(ssrc, ntp, rtp_timestamp)

    @property
    def sender_report(self) -> tuple[int, int] | None:
        """The latest sender report as (NTP, RTP timestamp on the frames' scale), or None."""
        report, origin = self._sender_report, self.frame_timestamp_origin()
        if report is None or origin is None:
            return None
        # Frames count from the first frame's RTP timestamp: the report's, on the same scale
        # (signed 32-bit distance: the report is seconds, not hours, from that frame).
        return report[0], timestamp_delta(report[1], origin)

    # --- keyframes --------------------------------------------------------------------------

    def request_keyframe(self, reason: str = "") -> None:
        """Ask the publisher for a keyframe (PLI), rate limited by media.pli_interval."""
        if self.kind != "video" or self.ended or self._request_pli is None:
            return
        now = time.monotonic()
        wait = self._last_pli + self._pli_interval - now
        if wait <= 0:
            self._send_pli(now)
        elif self._trailing is None:
            self._trailing = asyncio.get_running_loop().call_later(wait, self._fire_trailing)

    def _fire_trailing(self) -> None:
        self._trailing = None
        if not self.ended:
            self._send_pli(time.monotonic())

    def _send_pli(self, now: float) -> None:
        self._last_pli = now
        self.keyframes_requested += 1
        assert self._request_pli is not None
        self._request_pli()

    # --- views ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "participant": self.participant.id,
            "kind": self.kind,
            "codec": self.codec_name,
            "source": self.source,
            "muted": self.muted or self.moderator_muted,
            "muted_by": "moderator" if self.moderator_muted else ("self" if self.muted else None),
        }
