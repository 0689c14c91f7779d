"""Pre-encoded frames into an aiortc RTCRtpSender: packetize, never encode.

``RTCRtpSender._next_encoded_frame`` encodes ``av.Frame``s and calls
``encoder.pack(data)`` for anything else.  The sender normally makes its
encoder with ``get_encoder`` on the first frame, and aiortc's Opus encoder
opens a libopus context in its constructor; ``install_packer`` gives the
sender a ``Packer`` first, so no codec context is ever created and ``pack``
takes our ``MediaFrame`` as is (no av.Packet copy per viewer).  Incoming
PLI/FIR calls ``sender._send_keyframe()``, which aiortc only uses to force
its own encoder; ``on_keyframe_request`` rebinds it to ask the publisher.
``install_lean_loop`` replaces the sender's RTP loop with one that does per
frame what aiortc does per packet (see below).
"""

from __future__ import annotations

import logging
from typing import Callable

from aiortc import RTCRtpSender
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from . import aiortc_private as private
from .frame import MediaFrame

ENCODER_ATTR = private.SENDER_ENCODER
log = logging.getLogger("odsmedia.sfu")


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
            payloads = frame.payloads
            if payloads is None:
                # Class-level helpers: no encoder instance, no libx264 context.
                payloads = frame.payloads = H264Encoder._packetize(H264Encoder._split_bitstream(frame.data))
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


# --- the lean RTP loop ------------------------------------------------------------------------
#
# aiortc's ``_run_rtp`` spends most of a forwarded packet's CPU around the
# packet rather than on it: a fresh NTP time per packet (twice), a generic
# header-extension serializer, and four coroutine hops down to ``sendto``.
# For a passthrough sender everything but the payload, the sequence number
# and the marker is the same for all packets of a frame, so ``lean_run_rtp``
# works that out once per frame, then per packet packs a 12-byte header,
# protects it with SRTP and hands it to the socket.  The wire format is
# aiortc's own (same header extensions, same RTX/NACK history, same RTCP
# sender-report bookkeeping); test_aiortc_hooks and the forwarding tests
# decode what it sends.
#
# It is the frame path's loop only (``media.forwarding = "frame"``); the
# default packet path sends nothing from the sender (``install_downstream``
# below).  It mirrors ``RTCRtpSender._run_rtp`` of the aiortc 1.16.0 release
# (aiortc/rtcrtpsender.py, the loop after ``_next_encoded_frame``: one
# RtpPacket per payload, abs-send-time + MID extensions, history entry,
# ``transport._send_rtp``, then the ntp/rtp timestamp and octet/packet
# counters its RTCP loop reads); re-check it against that function when the
# aiortc pin moves.

import asyncio  # noqa: E402
import struct  # noqa: E402

import aioice.ice  # noqa: E402
from aiortc import clock  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402
from aiortc.rtcdtlstransport import State as DtlsState  # noqa: E402
from aiortc.rtcrtpsender import RTP_HISTORY_SIZE, random_sequence_number  # noqa: E402
from aiortc.rtp import RtpPacket  # noqa: E402
from aiortc.utils import random32  # noqa: E402

from ..metrics import egress_bytes as egress  # noqa: E402

_S = private._S
_D = private._D
LEAN_DTLS_ATTRS = private.DTLS_ATTRS
LEAN_ATTRS = tuple(_S + n for n in (
    "rtp_started", "rtp_exited", "rtp_history", "rtp_header_extensions_map", "mid", "track", "encoder",
    "ntp_timestamp", "rtp_timestamp", "octet_count", "packet_count"))
_HEADER = struct.Struct("!BBHLL")


def octets_frame(payloads: list[bytes], extension: int) -> int:
    # SRTP adds a 10-byte auth tag per packet (AES_CM_128_HMAC_SHA1_80).
    return sum(len(p) for p in payloads) + len(payloads) * (12 + extension + 10)


def install_lean_loop(sender: RTCRtpSender) -> None:
    """Make ``sender`` run ``lean_run_rtp`` (it must carry a Packer) when it starts."""
    missing = [a for a in LEAN_ATTRS if not hasattr(sender, a)]
    missing += [a for a in LEAN_DTLS_ATTRS if not hasattr(sender.transport, a)]
    if missing or not hasattr(sender, "_run_rtp"):
        raise RuntimeError(f"aiortc's RTCRtpSender changed: {missing or '_run_rtp'} is gone")

    def run_rtp(codec):
        return lean_run_rtp(sender, codec)

    sender._run_rtp = run_rtp  # type: ignore[method-assign]


async def lean_run_rtp(sender: RTCRtpSender, codec) -> None:
    getattr(sender, _S + "rtp_started").set()
    history: dict[int, RtpPacket] = getattr(sender, _S + "rtp_history")
    ext_map = getattr(sender, _S + "rtp_header_extensions_map")
    mid = getattr(sender, _S + "mid")
    track = getattr(sender, _S + "track")
    packer = getattr(sender, _S + "encoder")
    dtls = sender.transport
    connection = dtls.transport._connection
    srtp = dtls._tx_srtp
    ssrc = sender._ssrc
    payload_type = codec.payloadType
    sequence_number = random_sequence_number()
    timestamp_origin = random32()
    header = _HEADER.pack
    packets = octets = 0
    try:
        while True:
            frame = await track.recv()
            if not getattr(sender, private.SENDER_ENABLED):
                continue
            payloads, relative = packer.pack(frame)
            if not payloads:
                continue
            if dtls._state != DtlsState.CONNECTED:
                raise ConnectionError("DTLS transport is not connected")
            pair = connection._nominated.get(1)
            if pair is None:
                raise ConnectionError("ICE is not connected")
            # Once per frame: what every packet of it shares.
            timestamp = (timestamp_origin + relative) & 0xFFFFFFFF
            ntp = clock.current_ntp_time()
            template = RtpPacket(payload_type=payload_type, timestamp=timestamp)
            template.ssrc = ssrc
            template.extensions.abs_send_time = (ntp >> 14) & 0x00FFFFFF
            template.extensions.mid = mid
            profile, value = ext_map.set(template.extensions)
            extension = struct.pack("!HH", profile, len(value) >> 2) + value if value else b""
            first_byte = 0x90 if value else 0x80
            direct = type(pair.protocol) is aioice.ice.StunProtocol
            send = pair.protocol.transport.sendto if direct else None
            addr = pair.remote_addr
            last = len(payloads) - 1
            for i, payload in enumerate(payloads):
                marker = 1 if i == last else 0
                # History keeps real RtpPackets: aiortc's NACK/RTX path retransmits from it.
                packet = RtpPacket(payload_type=payload_type, marker=marker, sequence_number=sequence_number,
                                   timestamp=timestamp, ssrc=ssrc, payload=payload)
                packet.extensions = template.extensions
                history[sequence_number % RTP_HISTORY_SIZE] = packet
                data = srtp.protect(header(first_byte, marker << 7 | payload_type, sequence_number,
                                           timestamp, ssrc) + extension + payload)
                if send is not None:
                    send(data, addr)
                else:
                    await pair.protocol.send_data(data, addr)   # e.g. a TURN-relayed pair
                octets += len(payload)
                packets += 1
                sequence_number = (sequence_number + 1) & 0xFFFF
            # RTCP sender reports and getStats read these.
            sent = octets_frame(payloads, len(extension))
            setattr(dtls, _D + "tx_bytes", getattr(dtls, _D + "tx_bytes") + sent)
            egress.value += sent
            setattr(dtls, _D + "tx_packets", getattr(dtls, _D + "tx_packets") + len(payloads))
            setattr(sender, _S + "ntp_timestamp", ntp)
            setattr(sender, _S + "rtp_timestamp", timestamp)
            setattr(sender, _S + "octet_count", octets)
            setattr(sender, _S + "packet_count", packets)
    except (asyncio.CancelledError, ConnectionError, MediaStreamError):
        pass
    except Exception:
        # Like aiortc's loop: never leave without setting rtp_exited, or stop() hangs.
        import logging

        logging.getLogger("odsmedia.sfu").exception("lean RTP loop failed")
    finally:
        if getattr(sender, _S + "track") is not None:
            track.stop()
            setattr(sender, _S + "track", None)
        setattr(sender, _S + "encoder", None)
        getattr(sender, _S + "rtp_exited").set()


# --- the packet forward path ------------------------------------------------------------------
#
# On the packet path a subscriber's RTCRtpSender sends no RTP itself:
# ``install_downstream`` replaces its ``_run_rtp`` with a task that only
# reads the negotiated parameters into the Downstream and waits to be
# cancelled by ``stop()``, and its ``_retransmit`` with the Downstream's
# (history per publication, not per sender).  Its RTCP loop (``_run_rtcp``)
# and handler are replaced by lean ones: a sender report (+ SDES CNAME) once a
# second from the process's one report clock (media.reports: the audio and
# video senders of a transport in one compound packet, no timer per sender),
# packed with struct and written to the subscriber's socket directly, with the
# figures the PacketFanout gives at that moment (``report_for``) -- aiortc's
# loop builds RtcpPacket objects and goes through four coroutines per report,
# and needed the figures pushed to it four times a second; PLI/FIR go through
# ``on_keyframe_request``.  ``run_rtcp`` keeps the contract of
# ``RTCRtpSender._run_rtcp`` of aiortc 1.16.0 (BYE on stop; started/exited
# events that ``stop()`` waits on).

from aiortc.rtp import (RTCP_PSFB_FIR, RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPsfbPacket,  # noqa: E402
                        RtcpRrPacket, RtcpRtpfbPacket, RtcpSdesPacket, RtcpSourceInfo, RtcpSrPacket)

from . import reports, udpmux  # noqa: E402
from .forwarder import Downstream  # noqa: E402
from .srtp import direct_protect  # noqa: E402

_P = private
RTCP_SR = struct.Struct("!BBHLQLLL")       # V=2 RC=0, PT 200, length 6, SSRC, NTP, RTP, packets, octets
RTCP_BYE = struct.Struct("!BBHL")          # V=2 SC=1, PT 203, length 1, SSRC


def sender_report(ssrc: int, ntp: int, rtp: int, packets: int, octets: int) -> bytes:
    """An RTCP SR without report blocks, as aiortc's RtcpSrPacket serializes it."""
    return RTCP_SR.pack(0x80, 200, 6, ssrc, ntp, rtp, packets & 0xFFFFFFFF, octets & 0xFFFFFFFF)


def install_downstream(sender: RTCRtpSender, downstream: Downstream) -> None:
    private.require(sender, private.SENDER_ATTRS, "RTCRtpSender")
    private.require(sender.transport, private.DTLS_ATTRS, "RTCDtlsTransport")
    dtls = sender.transport

    async def run_rtp(codec) -> None:
        getattr(sender, _P.SENDER_RTP_STARTED).set()
        downstream.configure(ssrc=getattr(sender, _P.SENDER_SSRC), rtx_ssrc=getattr(sender, _P.SENDER_RTX_SSRC),
                             pt=codec.payloadType, rtx_pt=getattr(sender, _P.SENDER_RTX_PAYLOAD_TYPE),
                             ext_map=getattr(sender, _P.SENDER_EXTENSIONS_MAP), mid=getattr(sender, _P.SENDER_MID))
        try:
            await asyncio.get_running_loop().create_future()     # until stop() cancels
        except asyncio.CancelledError:
            pass
        finally:
            downstream.disconnect()
            track = getattr(sender, _P.SENDER_TRACK)
            if track is not None:
                track.stop()
                setattr(sender, _P.SENDER_TRACK, None)
            getattr(sender, _P.SENDER_RTP_EXITED).set()

    reported = [0, 0]
    clock_pair = [0, 0]           # the last (NTP, RTP) pair: kept while the fanout has none

    def report() -> bytes:
        """This moment's sender report (aiortc's fields and getStats counters updated too)."""
        values = downstream.fanout.report_for(downstream)
        if values is not None:
            clock_pair[0], clock_pair[1] = values
            setattr(sender, _P.SENDER_NTP_TIMESTAMP, values[0])
            setattr(sender, _P.SENDER_RTP_TIMESTAMP, values[1])
        sent_packets, sent_octets = downstream.packets, downstream.octets
        setattr(sender, _P.SENDER_PACKET_COUNT, sent_packets)
        setattr(sender, _P.SENDER_OCTET_COUNT, sent_octets)
        # getStats' transport counters (SRTP adds a 10-byte tag per packet).
        packets, octets = sent_packets - reported[0], sent_octets - reported[1]
        reported[0], reported[1] = sent_packets, sent_octets
        setattr(dtls, _P.DTLS_TX_PACKETS, getattr(dtls, _P.DTLS_TX_PACKETS) + packets)
        setattr(dtls, _P.DTLS_TX_BYTES, getattr(dtls, _P.DTLS_TX_BYTES) + octets + packets * (12 + len(downstream.ext) + 10))
        return sender_report(downstream.ssrc, clock_pair[0], clock_pair[1], sent_packets, sent_octets)

    def send_rtcp(payload: bytes) -> None:
        # Only once connected (before that there is nothing to report): SRTCP, then the socket.
        srtp = getattr(dtls, _P.DTLS_TX_SRTP)
        if downstream.active and srtp is not None and downstream.sendto is not None:
            downstream.sendto(srtp.protect_rtcp(payload), downstream.addr)

    async def run_rtcp() -> None:
        getattr(sender, _P.SENDER_RTCP_STARTED).set()
        cname = getattr(sender, _P.SENDER_CNAME)
        sdes = bytes(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=getattr(sender, _P.SENDER_SSRC),
                                                           items=[(1, cname.encode("utf8"))])])) if cname else b""

        def scheduled_report() -> bytes:
            return report() + sdes if downstream.active else b""

        # The transport's senders report together, once a second, from the one clock.
        reports.CLOCK.add(dtls, scheduled_report, send_rtcp)
        try:
            await asyncio.get_running_loop().create_future()     # until stop() cancels
        except asyncio.CancelledError:
            pass
        finally:
            reports.CLOCK.remove(dtls, scheduled_report)
            try:
                send_rtcp(RTCP_BYE.pack(0x81, 203, 1, downstream.ssrc))
            except Exception:
                log.exception("RTCP BYE failed")
            getattr(sender, _P.SENDER_RTCP_EXITED).set()

    async def handle_rtcp(packet) -> None:
        # Once the transport is connected, media.feedback takes the viewer's RTCP before
        # aiortc's receive task; this handles what comes before that, the same way.
        # aiortc's handler, leaner: receiver reports only update three figures (no stats
        # objects, no datetimes), NACKs go to the publication's history, PLI/FIR to the
        # publisher (rate-limited there).  REMB is not acted on: one publisher encoding
        # serves every viewer, so one viewer's estimate must not lower everyone's quality
        # (docs/forwarding.md).
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for block in packet.reports:
                if block.ssrc == downstream.ssrc:
                    downstream.fraction_lost = block.fraction_lost
                    downstream.jitter = block.jitter
                    downstream.cumulative_lost = block.packets_lost
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            for seq in packet.lost:
                downstream.resend(seq)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            getattr(sender, _P.SENDER_SEND_KEYFRAME)()

    setattr(sender, _P.SENDER_RUN_RTP, run_rtp)
    setattr(sender, _P.SENDER_RUN_RTCP, run_rtcp)
    setattr(sender, _P.SENDER_RETRANSMIT, downstream.retransmit)
    setattr(sender, _P.SENDER_HANDLE_RTCP, handle_rtcp)


def connect_downstream(sender: RTCRtpSender, downstream: Downstream) -> bool:
    """Give the Downstream its SRTP session and socket once DTLS and ICE are up."""
    dtls = sender.transport
    srtp = getattr(dtls, _P.DTLS_TX_SRTP)
    if srtp is None or getattr(dtls, _P.DTLS_STATE) != DtlsState.CONNECTED:
        return False
    connection = getattr(dtls.transport, _P.ICE_CONNECTION)
    pair = getattr(connection, _P.ICE_NOMINATED).get(1)
    if pair is None:
        return False
    fd = -1
    if type(pair.protocol) is aioice.ice.StunProtocol:
        transport = pair.protocol.transport
        sendto = transport.sendto                              # a plain UDP socket: write directly
        fd = udpmux.socket_fd(transport)                       # and the compiled loop may too
    else:
        protocol = pair.protocol                              # e.g. a TURN-relayed pair

        def sendto(data: bytes, addr: tuple[str, int]) -> None:
            asyncio.ensure_future(protocol.send_data(data, addr))
    downstream.connect(direct_protect(srtp), sendto, pair.remote_addr, srtp_session=srtp, fd=fd)
    return True
