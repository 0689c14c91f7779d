"""Viewers' RTCP on the packet path, handled where it arrives.

What a subscriber transport receives is RTCP: receiver reports (about one a
second per stream), NACKs, PLI/FIR.  aiortc takes every datagram through
aioice's queue to the DTLS transport's receive task (a task switch per
datagram), unprotects it there, parses it into RtcpPacket objects and awaits
each recipient's handler, after aioice has tried to parse it as STUN.  For a
viewer that costs more than the reports it answers.  ``install`` puts a
handler in front of that queue on a transport that only subscribes: SRTCP is
unprotected on arrival with the transport's receive session and walked in
place (``dispatch``); anything else (DTLS records, anything that is not RTCP)
takes aiortc's way.  (The server side's getStats of such a transport then
counts only what took aiortc's way in its received bytes and packets; nothing
in the server reads them.)

Publishing transports keep aiortc's path: their RTCP (the publisher's sender
reports) goes to aiortc's receivers, and SRTCP cannot be unprotected twice
(replay protection), so a datagram is taken here only when all of it is ours.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Callable, Optional

import pylibsrtp
from aiortc.rtp import is_rtcp

from . import aiortc_private as private

if TYPE_CHECKING:
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    from .forwarder import Downstream

log = logging.getLogger("odsmedia.sfu")

HEADER = struct.Struct("!BBH")               # V/P/count-or-FMT, packet type, length in words - 1
BLOCK = struct.Struct("!LB3sLLLL")           # report block: SSRC, fraction, cumulative (24 bits), ...
SSRC = struct.Struct("!L")
NACK_ITEM = struct.Struct("!HH")             # PID, BLP
SR, RR, RTPFB, PSFB = 200, 201, 205, 206

# A subscriber stream by the SSRC it sends: its Downstream and how to ask its publisher for a keyframe.
Find = Callable[[int], Optional[tuple["Downstream", Callable[[], None]]]]


def dispatch(plain: bytes, find: Find) -> None:
    """Act on one unprotected compound RTCP packet: report blocks about our streams update
    their Downstream's figures, generic NACKs are answered from the publication's history,
    PLI/FIR ask the publisher for a keyframe.  SDES, BYE, REMB and the rest are skipped."""
    offset, end = 0, len(plain)
    while offset + 4 <= end:
        first, pt, length = HEADER.unpack_from(plain, offset)
        nxt = offset + 4 + 4 * length
        if nxt > end:
            return                                   # truncated: what follows is not trusted
        count = first & 0x1F
        if pt == SR or pt == RR:
            block = offset + (28 if pt == SR else 8)
            for _ in range(count):
                if block + 24 > nxt:
                    break
                ssrc, fraction, lost, _, jitter, _, _ = BLOCK.unpack_from(plain, block)
                found = find(ssrc)
                if found is not None:
                    d = found[0]
                    d.fraction_lost = fraction
                    d.jitter = jitter
                    d.cumulative_lost = int.from_bytes(lost, "big", signed=True)
                block += 24
        elif pt == RTPFB and count == 1 and nxt - offset >= 12:          # generic NACK
            found = find(SSRC.unpack_from(plain, offset + 8)[0])
            if found is not None:
                resend = found[0].resend
                for item in range(offset + 12, nxt - 3, 4):
                    pid, blp = NACK_ITEM.unpack_from(plain, item)
                    resend(pid)
                    for bit in range(16):
                        if blp >> bit & 1:
                            resend((pid + bit + 1) & 0xFFFF)
        elif pt == PSFB and count in (1, 4) and nxt - offset >= 12:      # PLI; FIR names the SSRC in its FCI
            at = offset + 8 if count == 1 else offset + 12
            found = find(SSRC.unpack_from(plain, at)[0]) if at + 4 <= nxt else None
            if found is not None:
                found[1]()
        offset = nxt


def install(dtls: "RTCDtlsTransport", find: Find) -> None:
    """Handle the SRTCP that reaches ``dtls`` (a subscribe-only transport, connected) on arrival."""
    private.require(dtls, (private.DTLS_RX_SRTP,), "RTCDtlsTransport")
    connection = getattr(dtls.transport, private.ICE_CONNECTION)
    private.require(connection, (private.ICE_DATA_RECEIVED,), "aioice.Connection")
    queue = getattr(connection, private.ICE_DATA_RECEIVED)        # aiortc's way: the receive queue

    def data_received(data: bytes, component: int) -> None:
        srtp = getattr(dtls, private.DTLS_RX_SRTP)
        if srtp is None or not is_rtcp(data) or not 127 < data[0] < 192:      # (is_rtcp checks the length)
            queue(data, component)
            return
        try:
            plain = srtp.unprotect_rtcp(data)
        except pylibsrtp.Error:
            return                                   # not authentic, or a replay: aiortc drops it too
        try:
            dispatch(plain, find)
        except Exception:                            # one bad report must not reach aioice's protocol
            log.exception("subscriber RTCP failed")

    setattr(connection, private.ICE_DATA_RECEIVED, data_received)
