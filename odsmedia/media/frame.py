"""The encoded media unit that travels from a publisher to every sink, and the sink contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class MediaFrame:
    kind: str          # "audio" | "video"
    codec: str         # "H264" | "VP8" | "opus"  (aiortc codec names)
    data: bytes        # H.264: Annex B with start codes; VP8: raw frame; Opus: one packet
    timestamp: int     # RTP timestamp units, relative to the publication's first frame
    clock_rate: int    # 90000 video, 48000 Opus
    keyframe: bool
    arrival: float     # time.monotonic() when the frame left the receiver hook
    # H.264 RTP payloads, made by the first subscriber's sender and reused by the
    # rest: packetization has no per-viewer state, so N viewers cost one split.
    payloads: list[bytes] | None = field(default=None, repr=False, compare=False)


class Sink(Protocol):
    """What a Publication fans frames out to: the recorder's track, and each Subscription when
    ``media.forwarding = "frame"`` (live viewers are otherwise served by the packet fan-out)."""

    def on_frame(self, frame: MediaFrame) -> None:
        """One frame, on the event loop: queue it and return, never block or await."""

    def on_end(self) -> None:
        """The publication ended: no more frames."""

    def restart_at_keyframe(self) -> None:
        """Frames were skipped (forwarding resumed after a mute): drop what is queued and take
        video again only from its next keyframe."""


def h264_is_keyframe(data: bytes) -> bool:
    """True when an Annex B access unit holds an IDR slice (NAL type 5)."""
    find = data.find
    pos = find(b"\x00\x00\x01")
    end = len(data) - 3
    # Parameter sets and SEI come first; the loop stops at the first slice.
    while 0 <= pos < end:
        nal_type = data[pos + 3] & 0x1F
        if nal_type == 5:
            return True
        if nal_type == 1:
            return False
        pos = find(b"\x00\x00\x01", pos + 3)
    return False


def is_keyframe(codec: str, data: bytes) -> bool:
    if codec == "H264":
        return h264_is_keyframe(data)
    if codec == "VP8":
        # VP8 frame tag, RFC 6386 9.1: bit 0 is 0 on a key frame.
        return bool(data) and data[0] & 1 == 0
    return True  # audio: every packet decodes on its own
