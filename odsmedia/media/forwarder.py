"""Packet-level forwarding: one publisher's RTP to every subscriber, rewritten.

``PacketFanout`` (one per publication) gets every RTP packet the
publisher's receiver accepts, after SRTP unprotect and RTX unwrap, and in
the same call -- one event-loop wakeup per incoming packet for all
subscribers -- hands it to each ``Downstream`` (one per subscriber): the
12-byte header is rewritten (the subscriber's SSRC, payload type, sequence
number and timestamp offsets), the subscriber's header extension block
(its MID, the audio level) is put in front of the untouched payload, and
the result is SRTP-protected with the subscriber's key and written to its
socket.  No frame is reassembled, no payload re-packetized.

Two loops do that per copy.  Subscribers that are forwarding and whose
socket is a plain one get it from the compiled loop (media/native.py,
media/_fanout.c: one C call per incoming packet for all of them, no Python
object per copy); subscribers waiting for a keyframe, TURN-relayed ones,
and every subscriber when the C module is not built, from the Python loop
below.  Both put the same bytes on the wire (tests/test_native_forward.py).
``relist`` sorts subscribers into the two whenever one changes state.

Sequence numbers and timestamps.  A subscriber's stream is
``publisher + offset`` (mod 2^16, 2^32).  Offsets are set when it starts
and again whenever it resumes: after keyframe gating (join, unmute) and
after a publisher restart (new SSRC, or a sequence jump beyond
``MAX_JUMP``).  A resume continues at the subscriber's next sequence number
and advances its timestamp by the wall time that passed, so the
subscriber's sequence numbers stay contiguous and its timestamps
monotonic across gating and restarts.  Each rebase is kept as a segment so
a NACK for an older sequence number still maps to the right packet.

Loss repair.  The history is one ring per publication, indexed by the
publisher's sequence number.  A subscriber's NACK is mapped back through
its segments and answered from the ring (RTX when negotiated); a packet the
server never got is asked for upstream, NACKs from every subscriber
coalesced into one RTCP NACK per ``NACK_COALESCE`` and at most one request
per packet per ``NACK_REPEAT``.  The publisher's retransmission then
reaches every subscriber through the normal path (those that had it drop
the duplicate).

RTCP.  media.sender replaces each subscriber's sender RTCP loop with a
lean one that asks ``report_for`` at every sender report: the publisher's
latest (NTP, RTP) pair with the subscriber's timestamp offset applied, so
audio and video of one publisher keep the publisher's own clock relation
(lip sync), and the subscriber's packet and octet counts.  Its RTCP handler
keeps receiver reports' figures, answers NACKs (``Downstream.retransmit``)
and passes PLI/FIR to the publication's rate-limited keyframe request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Callable

from .. import metrics as tally
from ..metrics import FORWARD_SAMPLE_MASK, egress_bytes as egress, forward_latency
from . import native
from .native import NativeSlot
from .rtp import HEADER, RTX_OSN, extension_block, starts_keyframe

log = logging.getLogger("odsmedia.sfu")

HISTORY_SIZE = 1024          # packets; ~4 s of 720p at 1.5 Mbit/s, a power of two
MAX_JUMP = 1000              # a sequence jump beyond this is a publisher restart
NACK_COALESCE = 0.005        # seconds subscribers' NACKs are gathered before one goes upstream
NACK_REPEAT = 0.1            # the same packet is asked for upstream at most this often
SEGMENTS = 4                 # rebases remembered per subscriber for NACK mapping


class Downstream:
    """One subscriber's rewritten copy of a publication's RTP stream."""

    __slots__ = ("fanout", "video", "ssrc", "rtx_ssrc", "pt", "rtx_pt", "rtx_seq", "seq_off", "ts_off",
                 "gated", "next_seq", "next_ts", "held_at", "segments", "first_byte", "ext", "_ext_map",
                 "_mid", "_levels", "protect", "sendto", "addr", "_packets", "_octets", "retransmitted",
                 "resumes", "active", "configured", "fraction_lost", "jitter", "cumulative_lost",
                 "native", "_srtp_session", "_fd")

    def __init__(self, fanout: "PacketFanout") -> None:
        self.fanout = fanout
        self.video = fanout.video
        self.ssrc = 0
        self.rtx_ssrc = 0
        self.pt = 0
        self.rtx_pt: int | None = None
        self.rtx_seq = random.getrandbits(16)
        self.seq_off = 0
        self.ts_off = 0
        # Gated: waits for a keyframe start (video) or the next packet (audio), then rebases.
        self.gated = True
        self.next_seq = random.getrandbits(16)
        self.next_ts = random.getrandbits(32)
        self.held_at = time.monotonic()
        self.segments: list[tuple[int, int, int, int]] = []    # (first out seq, seq_off, ts_off, epoch)
        self.first_byte = 0x80
        self.ext = b""
        self._ext_map = None
        self._mid: str | None = None
        self._levels: dict[int, bytes] = {}
        self.protect: Callable[[bytes], bytes] | None = None
        self.sendto: Callable[..., None] | None = None
        self.addr: tuple[str, int] | None = None
        # The compiled loop's slot (media.native), when built and the socket is a plain one.
        self.native: NativeSlot | None = None
        self._srtp_session: Any = None
        self._fd = -1
        self._packets = 0              # sent by the Python loop (the native slot counts its own)
        self._octets = 0
        self.retransmitted = 0
        self.resumes = 0
        self.active = False            # configured (negotiated) and connected (SRTP + socket)
        self.configured = False
        # From the subscriber's receiver reports (RFC 3550 6.4.1).
        self.fraction_lost = 0
        self.jitter = 0
        self.cumulative_lost = 0

    # --- set-up (the sender's parameters and its connected transport) -----------------------

    def configure(self, *, ssrc: int, rtx_ssrc: int, pt: int, rtx_pt: int | None, ext_map, mid: str | None) -> None:
        self.ssrc, self.rtx_ssrc, self.pt, self.rtx_pt = ssrc, rtx_ssrc, pt, rtx_pt
        self._ext_map, self._mid = ext_map, mid
        self._levels = {}
        self.ext = extension_block(ext_map, mid)
        self.first_byte = 0x90 if self.ext else 0x80
        self.configured = True
        self._activate()

    def connect(self, protect: Callable[[bytes], bytes], sendto: Callable[..., None], addr: tuple[str, int], *,
                srtp_session: Any = None, fd: int = -1) -> None:
        """The subscriber's SRTP and socket.  With the pylibsrtp session and the socket's
        file descriptor too, the compiled loop serves it (when built); else the Python loop."""
        self.protect, self.sendto, self.addr = protect, sendto, addr
        self._srtp_session, self._fd = srtp_session, fd
        self._activate()

    def _activate(self) -> None:
        self.active = self.configured and self.protect is not None
        self._release_native()
        if self.active and self._srtp_session is not None and self._fd >= 0 and native.available:
            try:
                self.native = NativeSlot(self._srtp_session, self._fd, self.addr,   # type: ignore[arg-type]
                                         ssrc=self.ssrc, pt=self.pt, ext=self.ext,
                                         ext_low=extension_block(self._ext_map, self._mid, 0x00),
                                         ext_high=extension_block(self._ext_map, self._mid, 0xFF))
            except (OSError, ValueError):
                # (an address or extension block the slot cannot hold): the Python loop serves it.
                log.warning("compiled send loop refused a subscriber; it is served by the Python loop",
                            exc_info=True)
            else:
                native.rebase(self.native.slot, self.seq_off, self.ts_off)  # type: ignore[misc]
        self.fanout.relist()

    def _release_native(self) -> None:
        slot = self.native
        if slot is not None:
            packets, octets, _, _ = slot.counts()
            self._packets += packets
            self._octets += octets
            self.native = None
            self.fanout.relist()          # out of the loop's list before its socket duplicate closes
            slot.close()

    def disconnect(self) -> None:
        self.active = False
        self.fanout.remove(self)
        self._release_native()

    @property
    def packets(self) -> int:
        """RTP packets forwarded to this subscriber (sender reports, getStats)."""
        slot = self.native
        return self._packets + (slot.counts()[0] if slot is not None else 0)

    @property
    def octets(self) -> int:
        slot = self.native
        return self._octets + (slot.counts()[1] if slot is not None else 0)

    def ext_with_level(self, level: int) -> bytes:
        block = self._levels.get(level)
        if block is None:
            block = self._levels[level] = extension_block(self._ext_map, self._mid, level)
        return block

    # --- stream continuity ----------------------------------------------------------------

    def hold(self, last_seq: int, last_ts: int, at: float) -> None:
        """Stop forwarding and remember where this subscriber's stream stands;
        the next keyframe start (video) or packet (audio) resumes it there."""
        if self.gated:
            return
        self.next_seq = (last_seq + self.seq_off + 1) & 0xFFFF
        self.next_ts = (last_ts + self.ts_off) & 0xFFFFFFFF
        self.held_at = at
        self.gated = True
        self.fanout.relist()

    def resume(self, seq: int, ts: int, now: float, epoch: int, clock_rate: int) -> None:
        ticks = max(1, int((now - self.held_at) * clock_rate))
        self.seq_off = (self.next_seq - seq) & 0xFFFF
        self.ts_off = (self.next_ts + ticks - ts) & 0xFFFFFFFF
        segments = self.segments
        segments.append((self.next_seq, self.seq_off, self.ts_off, epoch))
        if len(segments) > SEGMENTS:
            del segments[0]
        self.gated = False
        self.resumes += 1
        if self.native is not None:
            native.rebase(self.native.slot, self.seq_off, self.ts_off)  # type: ignore[misc]
        self.fanout.relist()

    def lookup(self, out_seq: int) -> tuple[int, int, int] | None:
        """Subscriber sequence number -> (epoch, publisher sequence number, ts_off)."""
        for start, seq_off, ts_off, epoch in reversed(self.segments):
            if (out_seq - start) & 0xFFFF < 0x8000:
                return epoch, (out_seq - seq_off) & 0xFFFF, ts_off
        return None

    # --- loss repair ------------------------------------------------------------------------

    async def retransmit(self, out_seq: int) -> None:
        """RTCRtpSender._retransmit's replacement (aiortc awaits it)."""
        self.resend(out_seq)

    def resend(self, out_seq: int) -> None:
        """Answer one NACKed sequence number from the publication's history, or ask upstream."""
        found = self.lookup(out_seq)
        if found is None or not self.active:
            return
        epoch, seq, ts_off = found
        fanout = self.fanout
        entry = fanout.history_get(epoch, seq)
        if entry is None:
            if epoch == fanout.epoch:
                fanout.nack_upstream(seq)
            return
        _, _, ts, marker, payload, level = entry
        ext = self.ext if level is None else self.ext_with_level(level)
        out_ts = (ts + ts_off) & 0xFFFFFFFF
        mbit = 0x80 if marker else 0
        if self.rtx_pt is not None:
            data = HEADER.pack(self.first_byte, mbit | self.rtx_pt, self.rtx_seq, out_ts, self.rtx_ssrc) + ext \
                + RTX_OSN.pack(out_seq) + payload
            self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
        else:
            data = HEADER.pack(self.first_byte, mbit | self.pt, out_seq, out_ts, self.ssrc) + ext + payload
        self.retransmitted += 1
        tally.forward_nacks_answered.value += 1
        self.sendto(self.protect(data), self.addr)   # type: ignore[misc]


class PacketFanout:
    """One publication's packets: history, restarts, and the per-subscriber send loop."""

    def __init__(self, kind: str, codec: str, clock_rate: int, *,
                 request_keyframe: Callable[[str], None] | None = None,
                 send_nack: Callable[[int, list[int]], None] | None = None,
                 nack_repeat: float = NACK_REPEAT) -> None:
        self.kind = kind
        self.codec = codec
        self.video = kind == "video"
        self.clock_rate = clock_rate
        self.request_keyframe = request_keyframe
        self.send_nack = send_nack
        self.nack_repeat = nack_repeat
        self.downstreams: list[Downstream] = []
        self.paused = False
        self.ended = False
        self.epoch = 0
        self.ssrc: int | None = None
        self.max_seq = 0
        self.max_ts = 0
        self.last_arrival = time.monotonic()
        self.received = 0
        self.restarts = 0
        self.nacks_upstream = 0
        self._history: list[tuple | None] = [None] * HISTORY_SIZE
        self._retired: list[int] = []                                # SSRCs of replaced streams
        self._sr: tuple[int, int, int, float] | None = None        # (ntp, rtp, epoch, arrival)
        self._nack_pending: set[int] = set()
        self._nack_asked: dict[int, float] = {}
        self._nack_timer: asyncio.TimerHandle | None = None
        # What on_packet iterates (relist): native slots of forwarding subscribers, and the rest.
        self._slots: list[bytearray] = []
        self._python: list[Downstream] = []

    # --- subscribers ------------------------------------------------------------------------

    def add(self, downstream: Downstream) -> None:
        if downstream not in self.downstreams:
            # Copy on write: on_packet iterates the list without guarding against edits.
            self.downstreams = [*self.downstreams, downstream]
            self.relist()

    def remove(self, downstream: Downstream) -> None:
        if downstream in self.downstreams:
            self.downstreams = [d for d in self.downstreams if d is not downstream]
            self.relist()

    def hold(self, downstream: Downstream) -> None:
        """Resume this subscriber at the next keyframe (after unmute, or on demand)."""
        downstream.hold(self.max_seq, self.max_ts, self.last_arrival)

    def pause(self, paused: bool) -> None:
        """Muted: nothing is forwarded and every subscriber resumes at a keyframe afterwards."""
        if paused and not self.paused:
            for d in self.downstreams:
                d.hold(self.max_seq, self.max_ts, self.last_arrival)
        self.paused = paused

    def end(self) -> None:
        self.ended = True
        self.downstreams = []
        self.relist()
        if self._nack_timer is not None:
            self._nack_timer.cancel()
        self._nack_timer = None

    # --- the hot path -----------------------------------------------------------------------

    def on_packet(self, ssrc: int, seq: int, ts: int, marker: int, payload: bytes, level: int | None) -> None:
        """Every publisher packet, after SRTP and RTX unwrap (receiver hook, event loop)."""
        now = time.monotonic()
        self.received += 1
        if ssrc != self.ssrc:
            if ssrc in self._retired:
                return                                   # a late packet of a replaced stream
            self._restart(ssrc, seq, ts, now)
        else:
            delta = (seq - self.max_seq) & 0xFFFF
            if delta == 0:
                return                                   # duplicate
            if delta < 0x8000:
                if delta > MAX_JUMP:
                    self._restart(ssrc, seq, ts, now)
                else:
                    self.max_seq = seq
                    self.max_ts = ts
            elif 0x10000 - delta > MAX_JUMP:
                self._restart(ssrc, seq, ts, now)
            else:
                # An older packet: reordered, or the publisher's retransmission of one the
                # server lost (forwarded as is), or a second copy of one it has (dropped).
                entry = self._history[seq & (HISTORY_SIZE - 1)]
                if entry is not None and entry[0] == seq and entry[1] == self.epoch:
                    return
        self.last_arrival = now
        epoch = self.epoch
        self._history[seq & (HISTORY_SIZE - 1)] = (seq, epoch, ts, marker, payload, level)
        if self.paused:
            return
        # Subscribers waiting for a keyframe and those without a native slot, in Python.
        python = self._python
        if python:
            self._python_loop(python, seq, ts, marker, payload, level, now, epoch)
        # Everyone else in one call: rewrite, SRTP and sendto per copy in C (media.native).
        slots = self._slots
        if slots:
            sent = native.forward(slots, payload, seq, ts, marker, -1 if level is None else level)  # type: ignore[misc]
            tally.forward_packets.value += len(slots)
            tally.forward_bytes.value += sent
            egress.value += sent
            if not self.received & FORWARD_SAMPLE_MASK:  # one incoming packet in 16: its last copy's time
                forward_latency.observe(time.monotonic() - now)

    def _python_loop(self, downstreams: list[Downstream], seq: int, ts: int, marker: int, payload: bytes,
                     level: int | None, now: float, epoch: int) -> None:
        key: bool | None = None
        mbit = 0x80 if marker else 0
        pack = HEADER.pack
        for d in downstreams:
            if d.gated:
                if not d.active:
                    continue
                if self.video:
                    if key is None:
                        key = self._opens_keyframe(seq, ts, payload)
                    if not key:
                        tally.forward_gated_drops.value += 1
                        continue
                d.resume(seq, ts, now, epoch, self.clock_rate)
                if d.native is not None:
                    continue                             # resumed into the native list: sent there
            if level is None:
                first, ext = d.first_byte, d.ext
            else:
                ext = d.ext_with_level(level)
                first = 0x90 if ext else 0x80
            data = pack(first, mbit | d.pt, (seq + d.seq_off) & 0xFFFF, (ts + d.ts_off) & 0xFFFFFFFF,
                        d.ssrc) + ext + payload
            d._packets += 1
            d._octets += len(payload)
            try:                                         # (free in 3.11 unless it raises)
                data = d.protect(data)   # type: ignore[misc]
                d.sendto(data, d.addr)   # type: ignore[misc]
            except Exception:
                self._failed(d)
                continue
            sent = len(data)
            egress.value += sent
            tally.forward_packets.value += 1
            tally.forward_bytes.value += sent
            if not d._packets & FORWARD_SAMPLE_MASK:     # one packet in 16 per viewer: its time in the server
                forward_latency.observe(time.monotonic() - now)

    def relist(self) -> None:
        """Sort subscribers into the native list (forwarding, with a slot) and the Python
        one (gated, or no slot); called on every change of either (copy on write)."""
        slots, python = [], []
        if not self.ended:
            for d in self.downstreams:
                if d.native is not None and d.active and not d.gated:
                    slots.append(d.native.slot)
                else:
                    python.append(d)
        self._slots, self._python = slots, python

    def _failed(self, d: Downstream) -> None:
        # One subscriber's SRTP or socket failed: it leaves, the others go on.
        log.exception("forwarding to a subscriber failed; it is dropped")
        d.disconnect()

    def _opens_keyframe(self, seq: int, ts: int, payload: bytes) -> bool:
        if not starts_keyframe(self.codec, payload):
            return False
        if self.codec != "H264":
            return True        # VP8's start bit already says "first packet of the frame"
        # H.264: also the picture's first packet (an FU-A start after the picture's STAP-A is not).
        prev = self._history[(seq - 1) & (HISTORY_SIZE - 1)]
        return prev is None or prev[0] != (seq - 1) & 0xFFFF or prev[2] != ts or bool(prev[3])

    def _restart(self, ssrc: int, seq: int, ts: int, now: float) -> None:
        if self.ssrc is not None:
            # A new encoder (new SSRC) or a sequence jump: every subscriber continues its own
            # numbering at the next keyframe of the new stream.
            self.epoch += 1
            self.restarts += 1
            for d in self.downstreams:
                d.hold(self.max_seq, self.max_ts, self.last_arrival)
            self._sr = None
            if ssrc != self.ssrc:
                self._retired = [*self._retired[-7:], self.ssrc]
            if self.video and self.request_keyframe is not None:
                self.request_keyframe("publisher_restart")
            log.info("publisher stream restarted", extra={"ssrc": ssrc, "epoch": self.epoch})
        self.ssrc = ssrc
        self.max_seq = seq
        self.max_ts = ts

    # --- history and upstream NACK ----------------------------------------------------------

    def history_get(self, epoch: int, seq: int) -> tuple | None:
        entry = self._history[seq & (HISTORY_SIZE - 1)]
        if entry is None or entry[0] != seq or entry[1] != epoch:
            return None
        return entry

    def nack_upstream(self, seq: int) -> None:
        """A subscriber lost a packet the server never got: ask the publisher, coalesced."""
        if self.send_nack is None or self.ended:
            return
        self._nack_pending.add(seq)
        if self._nack_timer is None:
            self._nack_timer = asyncio.get_running_loop().call_later(NACK_COALESCE, self._flush_nacks)

    def _flush_nacks(self) -> None:
        self._nack_timer = None
        now = time.monotonic()
        asked = self._nack_asked
        lost = sorted(s for s in self._nack_pending if now - asked.get(s, -1e9) >= self.nack_repeat)
        self._nack_pending.clear()
        if len(asked) > 4 * HISTORY_SIZE:
            asked.clear()
        if lost and self.ssrc is not None and self.send_nack is not None:
            for s in lost:
                asked[s] = now
            self.nacks_upstream += 1
            tally.forward_nacks_upstream.value += len(lost)
            self.send_nack(self.ssrc, lost)

    # --- RTCP sender reports ----------------------------------------------------------------

    def on_sender_report(self, ssrc: int, ntp: int, rtp_ts: int) -> None:
        if ssrc == self.ssrc:
            self._sr = (ntp, rtp_ts, self.epoch, time.monotonic())

    def report_for(self, d: Downstream) -> tuple[int, int] | None:
        """(NTP, RTP) for this subscriber's next sender report, or None before it forwarded."""
        if d.gated or not d.packets:
            return None
        sr = self._sr
        if sr is not None and sr[2] == self.epoch:
            return sr[0], (sr[1] + d.ts_off) & 0xFFFFFFFF
        # No publisher report for this stream yet: no pair at all (aiortc then reports NTP 0,
        # which receivers ignore).  An arrival-based pair would disagree with the publisher's
        # clock by the capture-to-arrival delay, which differs between audio and video, and
        # receivers fit a line through their last reports: one bad pair skews sync for long.
        return None
