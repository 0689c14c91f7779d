"""Encoded frames out of an aiortc RTCRtpReceiver, with no decoding.

aiortc's receiver puts every reassembled ``(codec, JitterFrame)`` on a
private ``queue.Queue`` that a decoder thread drains.  ``tap`` replaces that
queue with an ``EncodedFrameTap`` before ``receive()`` starts the thread: the
tap turns each frame into a ``MediaFrame`` and calls back on the event loop
(``_handle_rtp_packet`` runs there), so nothing reaches the decoder, and
swaps the jitter buffer for an ``EagerJitterBuffer`` so a frame leaves as
soon as its last packet is in.  The
``None`` stop sentinel goes to a real queue that the idle decoder thread
waits on, so stopping the receiver still joins the thread, and the tap
reports the end of the track.
"""

from __future__ import annotations

import queue
import time
from typing import Any, Callable

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

from . import aiortc_private as private
from .frame import MediaFrame, is_keyframe

QUEUE_ATTR = private.RECEIVER_DECODER_QUEUE
STARTED_ATTR = private.RECEIVER_STARTED
JITTER_ATTR = private.RECEIVER_JITTER_BUFFER
# RTX SSRC -> media SSRC, filled from the remote description's ssrc-group:FID.
RTX_ATTR = private.RECEIVER_RTX_SSRC


class EagerJitterBuffer(JitterBuffer):
    """Completes a frame at its last packet instead of at the next frame's first.

    aiortc's buffer knows a frame is whole only when a packet with another
    timestamp arrives, which holds every video frame one frame interval
    (~33 ms) and audio four packets (80 ms, its prefetch).  Forwarding wants
    the frame now: a video frame is whole at its RTP marker bit when every
    packet since the last frame is present, an Opus packet is a whole frame.
    A lost packet still holds the frame until it is retransmitted (NACK) or
    the next frame arrives, exactly as before.
    """

    def __init__(self, capacity: int, is_video: bool) -> None:
        super().__init__(capacity, prefetch=0, is_video=is_video)

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        frame = super()._remove_frame(sequence_number)
        if frame is not None:
            return frame
        packets = []
        timestamp = None
        video = self._is_video
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None or (timestamp is not None and packet.timestamp != timestamp):
                return None
            timestamp = packet.timestamp
            packets.append(packet)
            if packet.marker or not video:
                self.remove(count + 1)
                return JitterFrame(data=b"".join([p._data for p in packets]), timestamp=timestamp)
        return None

FrameCallback = Callable[[MediaFrame], None]


class EncodedFrameTap:
    """Stands in for the receiver's decoder queue (``put`` and ``get`` only)."""

    __slots__ = ("kind", "on_frame", "on_end", "frames", "_idle", "_ended")

    def __init__(self, kind: str, on_frame: FrameCallback, on_end: Callable[[], None]) -> None:
        self.kind = kind
        self.on_frame = on_frame
        self.on_end = on_end
        self.frames = 0
        self._idle: queue.Queue[Any] = queue.Queue()
        self._ended = False

    def put(self, item: Any) -> None:
        if item is None:
            self._idle.put(None)
            if not self._ended:
                self._ended = True
                self.on_end()
            return
        codec, jitter_frame = item
        name = codec.name
        data = jitter_frame.data
        self.frames += 1
        self.on_frame(MediaFrame(self.kind, name, data, jitter_frame.timestamp, codec.clockRate,
                                 is_keyframe(name, data), time.monotonic()))

    def get(self, *args: Any, **kwargs: Any) -> Any:
        # Only the decoder thread calls this; it sees nothing but the stop sentinel.
        return self._idle.get(*args, **kwargs)


def tap(receiver: RTCRtpReceiver, on_frame: FrameCallback, on_end: Callable[[], None],
        kind: str | None = None) -> EncodedFrameTap:
    """Route ``receiver``'s encoded frames to ``on_frame``; call before it starts.

    ``kind`` is needed only before the receiver has a track (a client's recvonly
    transceiver before the remote description)."""
    if not all(hasattr(receiver, a) for a in (QUEUE_ATTR, STARTED_ATTR, JITTER_ATTR)):
        raise RuntimeError("aiortc's RTCRtpReceiver changed: the decoder queue hook is gone")
    if getattr(receiver, STARTED_ATTR):
        raise RuntimeError("receiver already started; tap it before receive()")
    kind = kind or receiver.track.kind
    hook = EncodedFrameTap(kind, on_frame, on_end)
    setattr(receiver, QUEUE_ATTR, hook)
    old: JitterBuffer = getattr(receiver, JITTER_ATTR)
    setattr(receiver, JITTER_ATTR, EagerJitterBuffer(old.capacity, is_video=kind == "video"))
    return hook


def send_pli(receiver: RTCRtpReceiver) -> Callable[[], None]:
    """A callable that sends an RTCP PLI for the receiver's current media SSRC."""
    import asyncio

    def request() -> None:
        # aiortc lists RTX SSRCs among the active sources (Chrome sends RTX padding
        # as bandwidth probes), and a PLI naming the RTX SSRC is ignored: map to
        # the media SSRC it repairs.
        rtx = getattr(receiver, RTX_ATTR, {})
        sources = receiver.getSynchronizationSources()
        if sources:
            media_ssrc = rtx.get(sources[0].source, sources[0].source)
            asyncio.ensure_future(receiver._send_rtcp_pli(media_ssrc))

    return request


# --- the packet tap (packet forward path) -----------------------------------------------------
#
# aiortc's RTCDtlsTransport unprotects and parses each RTP packet, then calls the
# routed receiver's ``_handle_rtp_packet``.  ``tap_packets`` wraps that method
# per receiver: the packet goes to the publication's PacketFanout first (RTX
# unwrapped to the media SSRC, padding-only packets dropped), then on through
# aiortc's own handling (statistics, NACK generation, REMB, and the frame tap
# above that still assembles frames once per publication for the recorder).
# Sender reports from the publisher are passed on the same way.

def tap_packets(receiver: RTCRtpReceiver, on_packet: Callable[[int, int, int, int, bytes, int | None], None],
                on_sender_report: Callable[[int, int, int], None]) -> None:
    private.require(receiver, (private.RECEIVER_CODECS, private.RECEIVER_RTX_SSRC, private.RECEIVER_HANDLE_RTP,
                               private.RECEIVER_HANDLE_RTCP), "RTCRtpReceiver")
    handle_rtp = getattr(receiver, private.RECEIVER_HANDLE_RTP)
    codecs: dict = getattr(receiver, private.RECEIVER_CODECS)        # filled in place by receive()
    rtx_ssrc: dict = getattr(receiver, private.RECEIVER_RTX_SSRC)

    async def rtp(packet: Any, arrival_time_ms: int) -> None:
        codec = codecs.get(packet.payload_type)
        if codec is not None and getattr(receiver, private.RECEIVER_ENABLED):
            level = packet.extensions.audio_level
            if level is not None:
                level = (0x80 if level[0] else 0) | level[1]
            payload = packet.payload
            if codec.name == "rtx":
                media_ssrc = rtx_ssrc.get(packet.ssrc)
                if media_ssrc is not None and len(payload) > 2:
                    on_packet(media_ssrc, payload[0] << 8 | payload[1], packet.timestamp, packet.marker,
                              payload[2:], level)
            elif payload:
                on_packet(packet.ssrc, packet.sequence_number, packet.timestamp, packet.marker, payload, level)
        await handle_rtp(packet, arrival_time_ms)

    setattr(receiver, private.RECEIVER_HANDLE_RTP, rtp)
    tap_sender_reports(receiver, on_sender_report)


def tap_sender_reports(receiver: RTCRtpReceiver, on_sender_report: Callable[[int, int, int], None]) -> None:
    """Pass every RTCP sender report of the publisher (SSRC, NTP, RTP) to ``on_sender_report``
    before aiortc handles it: the NTP<->RTP mapping that lines up a publisher's tracks."""
    from aiortc.rtp import RtcpSrPacket

    private.require(receiver, (private.RECEIVER_HANDLE_RTCP,), "RTCRtpReceiver")
    handle_rtcp = getattr(receiver, private.RECEIVER_HANDLE_RTCP)

    async def rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            on_sender_report(packet.ssrc, info.ntp_timestamp, info.rtp_timestamp)
        await handle_rtcp(packet)

    setattr(receiver, private.RECEIVER_HANDLE_RTCP, rtcp)


def frame_timestamp_origin(receiver: RTCRtpReceiver) -> Callable[[], int | None]:
    """A callable giving the RTP timestamp that the receiver's frame timestamps count from
    (None before the first frame): aiortc hands frames out relative to the first one."""
    private.require(receiver, (private.RECEIVER_TIMESTAMP_MAPPER,), "RTCRtpReceiver")
    mapper = getattr(receiver, private.RECEIVER_TIMESTAMP_MAPPER)

    def origin() -> int | None:
        value = getattr(mapper, private.TIMESTAMP_MAPPER_ORIGIN)
        return None if value is None else value & 0xFFFFFFFF

    return origin


def send_nack(receiver: RTCRtpReceiver) -> Callable[[int, list[int]], None]:
    """A callable that sends one RTCP NACK for these publisher sequence numbers."""
    import asyncio

    nack = getattr(receiver, private.RECEIVER_SEND_NACK)

    def request(media_ssrc: int, lost: list[int]) -> None:
        asyncio.ensure_future(nack(media_ssrc, lost))

    return request
