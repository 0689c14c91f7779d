"""The recorder's sink on one publication's fan-out (a ``Sink``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from odsmedia.media.frame import MediaFrame

from .clock import SenderReport, TrackClock

if TYPE_CHECKING:
    from .recording import RenditionWriter, RoomRecording


class TrackSink:
    """The recorder's sink on one publication's fan-out."""

    __slots__ = ("recording", "kind", "source", "publisher", "request_keyframe", "sender_report", "clock",
                 "waiting_keyframe", "ended", "held", "rendition")

    def __init__(self, recording: "RoomRecording", kind: str, request_keyframe: Callable[[str], None], *,
                 source: str, publisher: str = "",
                 sender_report: Callable[[], SenderReport | None] | None = None) -> None:
        self.recording = recording
        self.kind = kind
        self.source = source
        self.publisher = publisher                  # whose NTP clock the sender reports use
        self.request_keyframe = request_keyframe
        # The publication's latest (NTP, RTP); None: it has no sender reports (place by arrival).
        self.sender_report = sender_report
        self.clock = TrackClock()
        # Video enters the recording only at a keyframe (start, and after a dropped frame).
        self.waiting_keyframe = kind == "video"
        self.ended = False
        # Frames held until the track is placed on the timeline (waiting for a sender report).
        self.held: list[MediaFrame] = []
        # Video: the rendition this track feeds (None for audio, which feeds them all).
        self.rendition: RenditionWriter | None = None

    def on_frame(self, frame: MediaFrame) -> None:
        self.recording.on_frame(self, frame)

    def restart_at_keyframe(self) -> None:
        """The SFU resumes forwarding (unmute): frames were skipped, restart at a keyframe."""
        if self.kind == "video":
            self.waiting_keyframe = True

    def on_end(self) -> None:
        if not self.ended:
            self.ended = True
            self.recording.track_ended(self)
