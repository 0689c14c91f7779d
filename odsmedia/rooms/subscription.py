"""Subscription: one publication forwarded to one viewer.

On the packet path (the default) it owns a ``Downstream`` of the
publication's PacketFanout: the viewer's RTCRtpSender never reads the
track, packets are rewritten and sent by the fan-out, video starts (and
resumes after unmute) at a keyframe start, and a keyframe is requested when
the subscription starts.

On the frame path (``media.forwarding = "frame"``) it is a frame sink on the
Publication and the MediaStreamTrack its RTCRtpSender reads.  Frames wait in a bounded deque; video starts at a keyframe (one is
requested when the subscription starts), and a viewer that falls behind by
more than the bound loses its backlog and resumes at the next keyframe, so
one slow viewer never holds up the publisher or the other viewers.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..media.forwarder import Downstream
from ..media.frame import MediaFrame
from ..metrics import FORWARD_SAMPLE_MASK, forward_latency

if TYPE_CHECKING:
    from .participant import Participant
    from .publication import Publication


class Subscription(MediaStreamTrack):
    def __init__(self, publication: "Publication", subscriber: "Participant", *, queue_size: int = 256,
                 packet: bool = False) -> None:
        super().__init__()
        self.downstream: Downstream | None = Downstream(publication.fanout) if packet else None
        self.kind = publication.kind
        self.sid = "SU" + secrets.token_hex(5)
        self.publication = publication
        self.subscriber = subscriber
        self._queue: deque[MediaFrame] = deque()
        self._limit = max(2, queue_size)
        self._waiter: asyncio.Future[None] | None = None
        self._gated = publication.kind == "video"      # nothing before a keyframe
        self._finished = False
        self.forwarded = 0
        self.dropped = 0
        self.resyncs = 0

    # --- sink side (publisher's receiver hook, event loop) ----------------------------------

    def start(self) -> None:
        if self.downstream is not None:
            self.publication.fanout.add(self.downstream)
        else:
            self.publication.add_sink(self)
        if self._gated:
            self.publication.request_keyframe("subscriber_joined")

    def on_frame(self, frame: MediaFrame) -> None:
        if self._gated:
            if not frame.keyframe:
                self.dropped += 1
                return
            self._gated = False
        queue = self._queue
        if len(queue) >= self._limit:
            self._resync()
            if not frame.keyframe:
                self.dropped += 1
                return
            self._gated = False
        queue.append(frame)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _resync(self) -> None:
        self.dropped += len(self._queue)
        self._queue.clear()
        self.resyncs += 1
        if self.kind == "video":
            self._gated = True
            self.publication.request_keyframe("subscriber_overflow")

    def restart_at_keyframe(self) -> None:
        """Drop what is queued and start again at the next keyframe (after unmute)."""
        if self.downstream is not None:
            self.publication.fanout.hold(self.downstream)
        self._queue.clear()
        if self.kind == "video":
            self._gated = True
            self.publication.request_keyframe("resume")

    def on_end(self) -> None:
        self._finish()

    # --- track side (the RTCRtpSender's loop) -----------------------------------------------

    async def recv(self) -> MediaFrame:  # type: ignore[override]
        while True:
            if self._queue:
                self.forwarded += 1
                frame = self._queue.popleft()
                if not self.forwarded & FORWARD_SAMPLE_MASK:
                    forward_latency.observe(time.monotonic() - frame.arrival)
                return frame
            if self._finished or self.readyState != "live":
                raise MediaStreamError
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._queue.clear()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Leave the publication and end the track."""
        self.publication.remove_sink(self)
        if self.downstream is not None:
            self.downstream.disconnect()
        self._finish()
        self.stop()

    @property
    def lag(self) -> int:
        return len(self._queue)
