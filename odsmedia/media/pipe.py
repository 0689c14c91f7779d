"""Pipes: one publication carried from the node that has it to a relay node.

A pipe is the mediasoup PipeTransport idea on this SFU's packet path.  Its
two ends are UDP sockets, one on each node, and it carries one
publication:

- ``PipeSource`` (the sending end, on the origin or on a relay that feeds
  another relay) is ONE subscriber of the publication's ``PacketFanout``: a
  ``Downstream`` whose "socket" is the pipe.  So the stream on the pipe is
  exactly what a viewer gets -- rewritten to the pipe's SSRC, contiguous
  sequence numbers across publisher restarts and mutes, starting at a
  keyframe -- and NACKs from the far end are answered from the
  publication's one packet history by the same ``Downstream.retransmit``
  (no RTX on a pipe: a repair is the packet again, under its own number).
  Sender reports carry the publisher's (NTP, RTP) pair the fan-out
  computes for every subscriber, so lip sync survives the hop.
- ``PipeSink`` (the receiving end, on the relay) hands every RTP packet to
  the relay publication's own ``PacketFanout.on_packet`` -- the call the
  publisher's receiver tap makes on the origin -- so the relay fans out
  with the same code.  Keyframe requests (RTCP PLI) and NACKs its viewers
  cause go back up the pipe.

Wire: RTP and RTCP multiplexed on one 5-tuple (RFC 5761), payload type is
the publication's codec, one header extension (ssrc-audio-level, id 1) for
audio.  Plain on loopback between workers of one machine; with
``relay.srtp`` each direction is SRTP (AES_CM_128_HMAC_SHA1_80) under a key
the relay draws and sends over the Redis control channel, which is
authenticated (docs/relays.md).  Each end accepts packets only from the
address the control exchange named.

``PipeSink.drop`` (by sequence number) is a deterministic loss hook (tests and benchmarks put
loss on the pipe with it, never a sleep); ``PipeStats`` are the pipe
figures /metrics reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from typing import Callable

from aiortc import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (RTCP_PSFB_FIR, RTCP_PSFB_PLI, RTCP_RTPFB_NACK, HeaderExtensionsMap, RtcpByePacket,
                        RtcpPacket, RtcpPsfbPacket, RtcpRrPacket, RtcpRtpfbPacket, RtcpSrPacket,
                        is_rtcp)
from pylibsrtp import Policy, Session

from ..metrics import PIPE_FIGURES, retired_pipes
from . import reports
from .forwarder import HISTORY_SIZE, Downstream, PacketFanout
from .sender import sender_report
from .srtp import direct_protect

AUDIO_LEVEL_ID = 1
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
EMPTY_EXTENSIONS = b"\xbe\xde\x00\x00"   # RFC 8285 one-byte header form, no elements
KEY_BYTES = 30                     # AES_CM_128 master key (16) + salt (14)
RECEIVE_BUFFER = 1 << 20           # bytes asked for each pipe socket (the kernel caps it at rmem_max)
REPLAY_WINDOW = HISTORY_SIZE       # a repair may come this late: as old as the publication's history
MAX_JUMP = 1000                    # a larger sequence jump is a restart upstream, not loss


def pipe_extensions() -> HeaderExtensionsMap:
    ext_map = HeaderExtensionsMap()
    ext_map.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=AUDIO_LEVEL_ID, uri=AUDIO_LEVEL_URI)]))
    return ext_map


def new_keys() -> tuple[str, str]:
    """Two SRTP master keys (down: source -> relay, up: relay -> source), hex for the control message."""
    return os.urandom(KEY_BYTES).hex(), os.urandom(KEY_BYTES).hex()


class PipeCrypto:
    """Protect what this end sends, unprotect what it receives; plain when keys are None."""

    def __init__(self, send_key: str | None, receive_key: str | None) -> None:
        self.plain = send_key is None or receive_key is None
        if self.plain:
            self._tx = self._rx = None
        else:
            tx = Policy(key=bytes.fromhex(send_key), ssrc_type=Policy.SSRC_ANY_OUTBOUND)
            tx.allow_repeat_tx = True           # a NACK's answer is the same packet, same index, again
            rx = Policy(key=bytes.fromhex(receive_key), ssrc_type=Policy.SSRC_ANY_INBOUND)
            rx.window_size = REPLAY_WINDOW
            self._tx, self._rx = Session(tx), Session(rx)
            self.protect = direct_protect(self._tx)     # type: ignore[method-assign]  # the hot path's call

    def protect(self, data: bytes) -> bytes:
        return data if self._tx is None else self._tx.protect(data)

    def protect_rtcp(self, data: bytes) -> bytes:
        return data if self._tx is None else self._tx.protect_rtcp(data)

    def unprotect(self, data: bytes) -> bytes:
        return data if self._rx is None else self._rx.unprotect(data)

    def unprotect_rtcp(self, data: bytes) -> bytes:
        return data if self._rx is None else self._rx.unprotect_rtcp(data)


class PipeStats:
    """One end's figures (read by /metrics at scrape time)."""

    __slots__ = ("packets", "bytes", "lost", "nacks", "plis")

    def __init__(self) -> None:
        self.packets = 0           # RTP packets sent (source) or received (sink)
        self.bytes = 0
        self.lost = 0              # sink: sequence numbers never seen when the next arrived
        self.nacks = 0             # NACKed sequence numbers (sent up by the sink, answered by the source)
        self.plis = 0


def _retire(stats: PipeStats, direction: str) -> None:
    total = retired_pipes[direction]
    for name in PIPE_FIGURES:
        total[name] += getattr(stats, name)


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:   # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass        # ICMP port unreachable while the far end rebinds: the stall watch handles it


async def _bind(address: str, on_datagram: Callable[[bytes, tuple], None]) -> tuple[_Endpoint, tuple[str, int]]:
    endpoint = _Endpoint(on_datagram)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: endpoint,
                                                                             local_addr=(address, 0))
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # A relay whose event loop is held up for a moment must not lose what arrived meanwhile:
        # one pipe at 720p is ~200 packets/s, the default buffer holds ~100 ms of several pipes.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    host, port = transport.get_extra_info("sockname")[:2]
    return endpoint, (host, port)


class PipeSource:
    """The sending end: one subscriber of ``fanout`` whose packets go to the relay at ``remote``."""

    def __init__(self, fanout: PacketFanout, payload_type: int, *, remote: tuple[str, int],
                 request_keyframe: Callable[[str], None], crypto: PipeCrypto) -> None:
        self.fanout = fanout
        self.remote = remote
        self.request_keyframe = request_keyframe
        self.crypto = crypto
        self.stats = PipeStats()
        self.ssrc = random.getrandbits(32)
        self.downstream = Downstream(fanout)
        self.downstream.configure(ssrc=self.ssrc, rtx_ssrc=0, pt=payload_type, rtx_pt=None,
                                  ext_map=pipe_extensions(), mid=None)
        # Always an extension block (empty unless the packet has an audio level): the header's X
        # bit is fixed per Downstream, and a level block must not pass for payload.
        self.downstream.ext = EMPTY_EXTENSIONS
        self.downstream.first_byte = 0x90
        self.endpoint: _Endpoint | None = None
        self.local: tuple[str, int] | None = None
        self.last_heard = time.monotonic()      # the relay's last RTCP (its heartbeat included)
        self.closed = False

    async def open(self, address: str) -> tuple[str, int]:
        self.endpoint, self.local = await _bind(address, self._datagram)
        transport = self.endpoint.transport
        assert transport is not None
        stats, sendto = self.stats, transport.sendto

        def send(data: bytes, addr: tuple[str, int]) -> None:
            stats.packets += 1
            stats.bytes += len(data)
            sendto(data, addr)

        self.downstream.connect(self.crypto.protect, send, self.remote)
        self.fanout.add(self.downstream)
        self.request_keyframe("relay_joined")
        # Sender reports as every subscriber's (media.reports): the relay's fan-out takes the
        # publisher's clock pair from them, for its own viewers' lip sync.
        reports.CLOCK.add(self, self._report, self._send_report)
        return self.local

    def _report(self) -> bytes:
        values = self.fanout.report_for(self.downstream)
        if values is None:
            return b""
        d = self.downstream
        return sender_report(self.ssrc, values[0], values[1], d.packets, d.octets)

    def _send_report(self, report: bytes) -> None:
        if self.endpoint is not None and self.endpoint.transport is not None:
            self.endpoint.transport.sendto(self.crypto.protect_rtcp(report), self.remote)

    def _datagram(self, data: bytes, addr: tuple) -> None:
        if self.closed or addr[:2] != self.remote or not is_rtcp(data):
            return
        try:
            packets = RtcpPacket.parse(self.crypto.unprotect_rtcp(data))
        except Exception:
            return                          # not ours, or not authentic
        self.last_heard = time.monotonic()
        for packet in packets:
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                self.stats.nacks += len(packet.lost)
                for seq in packet.lost:
                    self.downstream.resend(seq)
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                self.stats.plis += 1
                self.request_keyframe("relay_pli")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        reports.CLOCK.remove(self, self._report)
        _retire(self.stats, "out")
        self.downstream.disconnect()
        if self.endpoint is not None and self.endpoint.transport is not None:
            try:
                self.endpoint.transport.sendto(self.crypto.protect_rtcp(bytes(RtcpByePacket(sources=[self.ssrc]))),
                                               self.remote)
            except Exception:
                pass
            self.endpoint.transport.close()


class PipeSink:
    """The receiving end: RTP from the source into ``fanout``; PLI and NACK back up."""

    def __init__(self, fanout: PacketFanout, *, crypto: PipeCrypto) -> None:
        self.fanout = fanout
        self.crypto = crypto
        self.stats = PipeStats()
        self.ssrc = random.getrandbits(32)       # ours, as the sender of RTCP feedback
        self.media_ssrc = 0                      # the source's, once known
        self.source: tuple[str, int] | None = None
        self.endpoint: _Endpoint | None = None
        self.local: tuple[str, int] | None = None
        self.last_packet = time.monotonic()
        self.closed = False
        # Loss hook: called with each RTP packet's sequence number; True drops it (as the network would).
        self.drop: Callable[[int], bool] | None = None
        self._max_seq: int | None = None

    async def open(self, address: str) -> tuple[str, int]:
        self.endpoint, self.local = await _bind(address, self._datagram)
        return self.local

    def connect(self, source: tuple[str, int]) -> None:
        """The source end's address, from the control exchange; packets from elsewhere are dropped."""
        self.source = tuple(source)[:2]          # type: ignore[assignment]
        self.last_packet = time.monotonic()

    def _datagram(self, data: bytes, addr: tuple) -> None:
        if self.closed or addr[:2] != self.source:
            return
        if is_rtcp(data):
            self._rtcp(data)
            return
        # (The header is in the clear under SRTP too; dropped before unprotect, so the repair is no replay.)
        if self.drop is not None and len(data) > 3 and self.drop(data[2] << 8 | data[3]):
            return
        try:
            data = self.crypto.unprotect(data)
        except Exception:
            return
        n = len(data)
        if n < 12 or data[0] >> 6 != 2:
            return
        first = data[0]
        pos = 12 + 4 * (first & 0x0F)
        level = None
        if first & 0x10:                          # header extension: only ours, the audio level
            if pos + 4 > n:
                return
            words = data[pos + 2] << 8 | data[pos + 3]
            end = pos + 4 + 4 * words
            if (data[pos] << 8 | data[pos + 1]) == 0xBEDE and words and data[pos + 4] >> 4 == AUDIO_LEVEL_ID:
                level = data[pos + 5]
            pos = end
        if first & 0x20:                          # padding
            n -= data[-1]
        if pos >= n:
            return
        seq = data[2] << 8 | data[3]
        ssrc = int.from_bytes(data[8:12], "big")
        stats = self.stats
        stats.packets += 1
        stats.bytes += len(data)
        self.last_packet = time.monotonic()
        self.media_ssrc = ssrc
        last = self._max_seq
        if last is None:
            self._max_seq = seq
        else:
            delta = (seq - last) & 0xFFFF
            if 0 < delta < 0x8000:
                if delta <= MAX_JUMP:
                    stats.lost += delta - 1
                self._max_seq = seq
        self.fanout.on_packet(ssrc, seq, int.from_bytes(data[4:8], "big"), data[1] >> 7, data[pos:n], level)

    def _rtcp(self, data: bytes) -> None:
        try:
            packets = RtcpPacket.parse(self.crypto.unprotect_rtcp(data))
        except Exception:
            return
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                info = packet.sender_info
                self.fanout.on_sender_report(packet.ssrc, info.ntp_timestamp, info.rtp_timestamp)

    def _send_rtcp(self, packet: object) -> None:
        if self.closed or self.source is None or self.endpoint is None or self.endpoint.transport is None:
            return
        data = self.crypto.protect_rtcp(bytes(packet))     # type: ignore[call-overload]
        self.endpoint.transport.sendto(data, self.source)

    def send_pli(self) -> None:
        self.stats.plis += 1
        self._send_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=self.ssrc, media_ssrc=self.media_ssrc))

    def send_nack(self, media_ssrc: int, lost: list[int]) -> None:
        self.stats.nacks += len(lost)
        self._send_rtcp(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=self.ssrc, media_ssrc=media_ssrc, lost=lost))

    def heartbeat(self) -> None:
        """An empty receiver report: tells the source this end still listens."""
        self._send_rtcp(RtcpRrPacket(ssrc=self.ssrc))

    def idle_for(self, now: float) -> float:
        return now - self.last_packet

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        _retire(self.stats, "in")
        if self.endpoint is not None and self.endpoint.transport is not None:
            self.endpoint.transport.close()
