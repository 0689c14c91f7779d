"""Pre-encoded frames into an aiortc RTCRtpSender: packetize, never encode.

``RTCRtpSender._next_encoded_frame`` encodes ``av.Frame``s and calls
``encoder.pack(data)`` for anything else.  The sender normally makes its
encoder with ``get_encoder`` on the first frame, and aiortc's Opus encoder
opens a libopus context in its constructor; ``install_packer`` gives the
sender a ``Packer`` first, so no codec context is ever created and ``pack``
takes our ``MediaFrame`` as is (no av.Packet copy per viewer).  Incoming
PLI/FIR calls ``sender._send_keyframe()``, which aiortc only uses to force
its own encoder; ``on_keyframe_request`` rebinds it to ask the publisher.
"""

from __future__ import annotations

from typing import Callable

from aiortc import RTCRtpSender
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from .frame import MediaFrame

ENCODER_ATTR = "_RTCRtpSender__encoder"


class Packer:
    """What the sender calls ``pack()`` on: MediaFrame -> RTP payloads."""

    __slots__ = ("codec", "picture_id", "frames")

    def __init__(self, codec: str) -> None:
        if codec not in ("H264", "VP8", "opus"):
            raise ValueError(f"no packetizer for {codec}")
        self.codec = codec
        self.picture_id = 0
        self.frames = 0

    def pack(self, frame: MediaFrame) -> tuple[list[bytes], int]:
        self.frames += 1
        codec = self.codec
        if codec == "H264":
            # Class-level helpers: no encoder instance, no libx264 context.
            payloads = H264Encoder._packetize(H264Encoder._split_bitstream(frame.data))
        elif codec == "VP8":
            payloads = Vp8Encoder._packetize(frame.data, self.picture_id)
            self.picture_id = (self.picture_id + 1) & 0x7FFF
        else:
            payloads = [frame.data]
        # MediaFrame.timestamp is already in the codec's clock units.
        return payloads, frame.timestamp

    def encode(self, frame, force_keyframe: bool = False):  # pragma: no cover - guard
        raise RuntimeError("the SFU never encodes: a decoded frame reached a passthrough sender")


def install_packer(sender: RTCRtpSender, codec: str) -> Packer:
    if not hasattr(sender, ENCODER_ATTR):
        raise RuntimeError("aiortc's RTCRtpSender changed: the encoder hook is gone")
    packer = Packer(codec)
    setattr(sender, ENCODER_ATTR, packer)
    return packer


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Route the viewer's PLI/FIR (RTCP at this sender) to ``callback``."""
    sender._send_keyframe = callback  # type: ignore[method-assign]
