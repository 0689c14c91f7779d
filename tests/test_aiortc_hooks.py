"""The private aiortc hooks the SFU depends on still work (aiortc 1.16).

If an aiortc upgrade renames or reshapes them, these fail first, with the
hook named, instead of the SFU silently decoding or dropping media.
"""

from __future__ import annotations

import asyncio
import threading
import time

import aiortc
import pytest

from odsmedia.media import ice
from odsmedia.media.frame import MediaFrame
from odsmedia.media.receiver import QUEUE_ATTR, RTX_ATTR, STARTED_ATTR, tap
from odsmedia.media.sender import ENCODER_ATTR, LEAN_ATTRS, LEAN_DTLS_ATTRS, Packer, install_packer
from testsupport.peers import CounterVideoTrack, peer

pytestmark = pytest.mark.timeout(60)


def test_aiortc_series_is_pinned():
    assert aiortc.__version__.startswith("1.16.")


async def test_private_attributes_exist():
    pc = peer()
    t = pc.addTransceiver("video", direction="sendrecv")
    try:
        assert hasattr(t.receiver, QUEUE_ATTR) and hasattr(t.receiver, STARTED_ATTR)
        assert isinstance(getattr(t.receiver, RTX_ATTR), dict)
        assert hasattr(t.sender, ENCODER_ATTR) and getattr(t.sender, ENCODER_ATTR) is None
        assert callable(t.sender._send_keyframe) and callable(t.receiver._send_rtcp_pli)
        assert all(hasattr(t.sender, a) for a in LEAN_ATTRS), [a for a in LEAN_ATTRS if not hasattr(t.sender, a)]
        assert all(hasattr(t.sender.transport, a) for a in LEAN_DTLS_ATTRS)
        assert hasattr(t.sender.transport.transport, "_connection")
        assert hasattr(t.sender.transport.transport._connection, "_nominated")
        assert hasattr(t.receiver, "_RTCRtpReceiver__jitter_buffer")
    finally:
        await pc.close()


async def test_tap_receives_encoded_frames_and_sees_the_end():
    ice.configure(["127.0.0.1"])
    sender_pc, receiver_pc = peer(), peer()
    frames: list[MediaFrame] = []
    ended = asyncio.Event()
    source = CounterVideoTrack(fps=30)
    sender_pc.addTransceiver(source, direction="sendonly")
    try:
        await sender_pc.setLocalDescription(await sender_pc.createOffer())
        await receiver_pc.setRemoteDescription(sender_pc.localDescription)
        receiver = receiver_pc.getTransceivers()[0].receiver
        hook = tap(receiver, frames.append, ended.set)
        assert getattr(receiver, QUEUE_ATTR) is hook
        await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
        await sender_pc.setRemoteDescription(receiver_pc.localDescription)
        deadline = time.monotonic() + 15
        while len(frames) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(frames) >= 10
        assert frames[0].keyframe and frames[0].kind == "video" and frames[0].clock_rate == 90000
        assert frames[0].codec in ("VP8", "H264") and frames[0].timestamp == 0
        assert all(b.timestamp > a.timestamp for a, b in zip(frames, frames[1:]))
        with pytest.raises(RuntimeError):
            tap(receiver, frames.append, ended.set)      # started receivers cannot be tapped
    finally:
        await sender_pc.close()
        await receiver_pc.close()
    # Stopping the receiver passed the sentinel through: the end is reported, the thread is gone.
    assert ended.is_set()
    assert not [t for t in threading.enumerate() if t.name == "video-decoder"]


async def test_packer_replaces_the_encoder_and_refuses_decoded_frames():
    pc = peer()
    t = pc.addTransceiver("audio", direction="sendonly")
    try:
        packer = install_packer(t.sender, "opus")
        assert getattr(t.sender, ENCODER_ATTR) is packer
        payloads, ts = packer.pack(MediaFrame("audio", "opus", b"\xfc\x01", 960, 48000, True, 0.0))
        assert payloads == [b"\xfc\x01"] and ts == 960
        h264 = Packer("H264")
        frame = MediaFrame("video", "H264", b"\x00\x00\x00\x01\x65" + b"\x11" * 3000, 0, 90000, True, 0.0)
        payloads, _ = h264.pack(frame)
        assert len(payloads) >= 3 and payloads[0][0] & 0x1F == 28   # FU-A fragments of one NAL
        # A second viewer's sender reuses the first one's packetization of the shared frame.
        assert Packer("H264").pack(frame)[0] is payloads
        with pytest.raises(RuntimeError):
            h264.encode(None)
    finally:
        await pc.close()


def _packet(seq: int, ts: int, marker: bool, data: bytes):
    from aiortc.rtp import RtpPacket

    p = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, marker=int(marker))
    p._data = data
    return p


def test_eager_jitter_buffer_completes_frames_at_their_last_packet():
    from odsmedia.media.receiver import EagerJitterBuffer

    video = EagerJitterBuffer(128, is_video=True)
    assert video.add(_packet(10, 3000, False, b"a"))[1] is None
    _, frame = video.add(_packet(11, 3000, True, b"b"))          # marker: whole now, not at the next frame
    assert frame.data == b"ab" and frame.timestamp == 3000
    assert video.add(_packet(12, 6000, False, b"c"))[1] is None
    assert video.add(_packet(14, 6000, True, b"e"))[1] is None    # 13 missing: wait
    _, frame = video.add(_packet(13, 6000, False, b"d"))          # the retransmission completes it
    assert frame.data == b"cde"
    assert video.add(_packet(12, 6000, False, b"late"))[1] is None  # a duplicate of the past is dropped

    audio = EagerJitterBuffer(16, is_video=False)
    for seq in range(5):
        _, frame = audio.add(_packet(seq, seq * 960, True, bytes([seq])))
        assert frame.data == bytes([seq]) and frame.timestamp == seq * 960   # no prefetch delay
