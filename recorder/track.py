"""The recorder's sink on one publication's fan-out (a ``Sink``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from odsmedia.media.frame import MediaFrame

from .clock import TrackClock

if TYPE_CHECKING:
    from .recording import RoomRecording


class TrackSink:
    """The recorder's sink on one publication's fan-out."""

    __slots__ = ("recording", "kind", "request_keyframe", "clock", "waiting_keyframe", "ended")

    def __init__(self, recording: "RoomRecording", kind: str, request_keyframe: Callable[[str], None]) -> None:
        self.recording = recording
        self.kind = kind
        self.request_keyframe = request_keyframe
        self.clock = TrackClock()
        # Video enters the recording only at a keyframe (start, and after a dropped frame).
        self.waiting_keyframe = kind == "video"
        self.ended = False

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
