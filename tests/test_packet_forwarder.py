"""The packet forward path's rewriting, gating, restarts, NACK mapping and reports.

Packets go through a real PacketFanout into Downstreams whose SRTP protect
is the identity and whose socket is a list; what they "send" is parsed
back with aiortc's own RTP parser and the subscriber's negotiated header
extension map.  End-to-end behaviour with real peers is in
test_sfu_packet_path.py.
"""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from odsmedia import metrics
from odsmedia.media.forwarder import Downstream, PacketFanout
from odsmedia.media.rtp import h264_starts_keyframe, starts_keyframe, vp8_starts_keyframe

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"

# H.264 payloads (RFC 6184): STAP-A with SPS + PPS, FU-A start/end of an IDR, a P slice.
STAP_SPS_PPS = bytes([24, 0, 3, 0x67, 0x42, 0x1F, 0, 2, 0x68, 0xCE])
FU_IDR_START = bytes([0x7C, 0x85]) + b"idr-a"
FU_IDR_END = bytes([0x7C, 0x45]) + b"idr-b"
P_SLICE = bytes([0x41, 0x9A]) + b"p"


def ext_map(*uris: str, first_id: int = 1) -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=first_id + i, uri=u) for i, u in enumerate(uris)]))
    return m


class Wire:
    """A subscriber's socket: keeps what was sent, parsed with its extension map."""

    def __init__(self, extensions: HeaderExtensionsMap) -> None:
        self.extensions = extensions
        self.packets: list[RtpPacket] = []

    def sendto(self, data: bytes, addr) -> None:
        self.packets.append(RtpPacket.parse(data, self.extensions))


def subscriber(fanout: PacketFanout, *, ssrc: int, mid: str, rtx: bool = True, ext_id: int = 1,
               level: bool = False) -> tuple[Downstream, Wire]:
    d = Downstream(fanout)
    uris = (MID_URI, LEVEL_URI) if level else (MID_URI,)
    extensions = ext_map(*uris, first_id=ext_id)
    d.configure(ssrc=ssrc, rtx_ssrc=ssrc + 1, pt=100 + ext_id, rtx_pt=(110 + ext_id) if rtx else None,
                ext_map=extensions, mid=mid)
    wire = Wire(extensions)
    d.connect(lambda data: data, wire.sendto, ("127.0.0.1", 9))
    fanout.add(d)
    return d, wire


def keyframe(fanout: PacketFanout, ssrc: int, seq: int, ts: int) -> int:
    for i, payload in enumerate((STAP_SPS_PPS, FU_IDR_START, FU_IDR_END)):
        fanout.on_packet(ssrc, (seq + i) & 0xFFFF, ts, int(i == 2), payload, None)
    return (seq + 3) & 0xFFFF


def delta(fanout: PacketFanout, ssrc: int, seq: int, ts: int) -> int:
    fanout.on_packet(ssrc, seq, ts, 1, P_SLICE, None)
    return (seq + 1) & 0xFFFF


async def flushed(fanout: PacketFanout) -> None:
    """Wait (with a deadline) until the coalesced upstream NACK has gone out."""
    deadline = asyncio.get_running_loop().time() + 5
    while fanout._nack_timer is not None:
        assert asyncio.get_running_loop().time() < deadline, "upstream NACK never flushed"
        await asyncio.sleep(0.005)


def assert_contiguous(packets: list[RtpPacket]) -> None:
    seqs = [p.sequence_number for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:])), seqs


def test_keyframe_starts():
    assert h264_starts_keyframe(STAP_SPS_PPS)
    assert h264_starts_keyframe(bytes([0x65, 0x88]))                 # single NAL IDR
    assert h264_starts_keyframe(FU_IDR_START)
    assert not h264_starts_keyframe(FU_IDR_END)                     # a continuation, not a start
    assert not h264_starts_keyframe(P_SLICE)
    assert not h264_starts_keyframe(bytes([24, 0, 2, 0x06, 0x05, 0, 2, 0x41, 0x9A]))   # STAP-A: SEI + P
    assert not h264_starts_keyframe(bytes([0x7C, 0x81]))            # FU-A start of a non-IDR slice
    assert not h264_starts_keyframe(b"")
    # VP8 (RFC 7741): X=1, I with a 15-bit picture id, S=1, partition 0; then the frame tag.
    assert vp8_starts_keyframe(bytes([0x90, 0x80, 0x81, 0x23, 0x10]))
    assert not vp8_starts_keyframe(bytes([0x90, 0x80, 0x81, 0x23, 0x11]))   # inter frame
    assert not vp8_starts_keyframe(bytes([0x80, 0x80, 0x81, 0x23, 0x10]))   # S=0: not the first packet
    assert vp8_starts_keyframe(bytes([0x10, 0x10]))                 # no extension
    assert starts_keyframe("opus", b"\x01")


async def test_gating_restart_and_contiguous_numbering():
    keyframes = []
    fanout = PacketFanout("video", "H264", 90000, request_keyframe=keyframes.append)
    early, early_wire = subscriber(fanout, ssrc=1000, mid="0")
    seq, ts = 65530, 4_000_000_000                                  # both wrap during the test
    seq = delta(fanout, 7, seq, ts)                                 # before any keyframe: held back
    assert early_wire.packets == []
    ts += 3000
    seq = keyframe(fanout, 7, seq, ts)
    for _ in range(3):
        ts += 3000
        seq = delta(fanout, 7, seq, ts)
    late, late_wire = subscriber(fanout, ssrc=2000, mid="3", ext_id=5)   # joins mid-GOP
    ts += 3000
    seq = delta(fanout, 7, seq, ts)
    assert late_wire.packets == []
    ts += 3000
    seq = keyframe(fanout, 7, seq, ts)
    assert len(early_wire.packets) == 3 + 3 + 1 + 3 and len(late_wire.packets) == 3

    # Rewritten: the subscriber's SSRC, payload type and MID (at its own extension id); payload untouched.
    first = early_wire.packets[0]
    assert (first.ssrc, first.payload_type, first.extensions.mid, first.payload) == (1000, 101, "0", STAP_SPS_PPS)
    assert late_wire.packets[0].extensions.mid == "3" and late_wire.packets[0].payload_type == 105
    assert [p.marker for p in early_wire.packets[:3]] == [0, 0, 1]
    ts_steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(early_wire.packets, early_wire.packets[1:])}
    assert ts_steps == {0, 3000}

    # The publisher restarts its encoder: new SSRC, new sequence and timestamp bases.
    seq, ts = 100, 5000
    seq = delta(fanout, 8, seq, ts)                                 # not a keyframe: everyone waits
    assert fanout.restarts == 1 and keyframes == ["publisher_restart"]
    assert len(early_wire.packets) == 10
    ts += 3000
    seq = keyframe(fanout, 8, seq, ts)
    ts += 3000
    seq = delta(fanout, 8, seq, ts)
    for wire in (early_wire, late_wire):
        assert_contiguous(wire.packets)                             # no jump across gating or the restart
        assert {p.ssrc for p in wire.packets} == {wire.packets[0].ssrc}
        before, after = wire.packets[-5], wire.packets[-4]          # last old packet, first new one
        assert 0 < (after.timestamp - before.timestamp) & 0xFFFFFFFF < 10 * 90000   # on by the wall time
        assert after.payload == STAP_SPS_PPS


async def test_a_sequence_jump_is_a_restart_and_reordering_is_not():
    fanout = PacketFanout("video", "H264", 90000)
    d, wire = subscriber(fanout, ssrc=1, mid="0")
    seq = keyframe(fanout, 7, 10, 0)
    seq = delta(fanout, 7, seq + 1, 3000)                           # seq 13 lost upstream: a gap
    fanout.on_packet(7, 13, 3000, 0, P_SLICE, None)                 # ... and it arrives late
    assert fanout.restarts == 0
    assert [p.sequence_number - wire.packets[0].sequence_number for p in wire.packets] == [0, 1, 2, 4, 3]
    highest = (wire.packets[0].sequence_number + 4) & 0xFFFF
    keyframe(fanout, 7, seq + 5000, 6000)                           # same SSRC, jump: restart
    assert fanout.restarts == 1
    assert wire.packets[-3].sequence_number == (highest + 1) & 0xFFFF
    assert_contiguous(wire.packets[-3:])


async def test_nacks_answered_from_history_through_each_mapping_and_passed_upstream_coalesced():
    upstream: list[tuple[int, list[int]]] = []
    # (A repeat window far longer than the test: on a loaded machine 0.1 s can pass between two lines.)
    fanout = PacketFanout("video", "H264", 90000, send_nack=lambda ssrc, lost: upstream.append((ssrc, lost)),
                          nack_repeat=60)
    rtx, rtx_wire = subscriber(fanout, ssrc=1000, mid="0")
    plain, plain_wire = subscriber(fanout, ssrc=2000, mid="0", rtx=False)
    answered, asked = metrics.forward_nacks_answered.value, metrics.forward_nacks_upstream.value
    seq = keyframe(fanout, 7, 500, 90000)
    seq = delta(fanout, 7, seq, 93000)
    old = rtx_wire.packets[1]                                       # FU-A start, first epoch
    keyframe(fanout, 9, 40000, 1234)                                # restart; the old packet stays mapped
    await rtx.retransmit(old.sequence_number)
    repair = rtx_wire.packets[-1]
    assert repair.payload_type == 111 and repair.ssrc == 1001          # RTX: its own PT and SSRC
    assert int.from_bytes(repair.payload[:2], "big") == old.sequence_number
    assert repair.payload[2:] == FU_IDR_START and repair.timestamp == old.timestamp
    await plain.retransmit(plain_wire.packets[1].sequence_number)
    again = plain_wire.packets[-1]
    assert (again.sequence_number, again.payload, again.ssrc) == (plain_wire.packets[1].sequence_number,
                                                                  FU_IDR_START, 2000)
    assert rtx.retransmitted == plain.retransmitted == 1

    # Packets the server never got (a gap upstream): one NACK upstream for both viewers' requests.
    fanout.on_packet(9, 40005, 4234, 1, P_SLICE, None)              # 40003 and 40004 missing
    last = rtx_wire.packets[-1].sequence_number
    for d, wire in ((rtx, rtx_wire), (plain, plain_wire)):
        top = wire.packets[-1].sequence_number
        await d.retransmit((top - 1) & 0xFFFF)
        await d.retransmit((top - 2) & 0xFFFF)
    await flushed(fanout)
    assert upstream == [(9, [40003, 40004])]
    await rtx.retransmit((last - 1) & 0xFFFF)                       # asked again: not repeated
    await flushed(fanout)
    assert len(upstream) == 1 and fanout.nacks_upstream == 1
    # /metrics: two answered from the history, two sequence numbers asked upstream.
    assert (metrics.forward_nacks_answered.value - answered, metrics.forward_nacks_upstream.value - asked) == (2, 2)
    fanout.end()


async def test_mute_holds_and_resumes_at_a_keyframe_and_reports_use_the_publishers_clock():
    fanout = PacketFanout("audio", "opus", 48000)
    d, wire = subscriber(fanout, ssrc=5, mid="1", level=True)
    fanout.on_packet(3, 1, 960, 0, b"opus-1", 0x80 | 30)
    fanout.on_packet(3, 2, 1920, 0, b"opus-2", 40)
    assert [(p.payload, p.extensions.audio_level) for p in wire.packets] == [(b"opus-1", (True, 30)),
                                                                             (b"opus-2", (False, 40))]
    assert fanout.report_for(d) is None                     # no publisher report yet: no pair
    fanout.on_sender_report(3, ntp=123 << 32, rtp_ts=1920)
    assert fanout.report_for(d) == (123 << 32, wire.packets[-1].timestamp)
    fanout.pause(True)
    fanout.on_packet(3, 3, 2880, 0, b"muted", None)
    fanout.pause(False)
    fanout.on_packet(3, 4, 3840, 0, b"opus-4", None)
    assert [p.payload for p in wire.packets] == [b"opus-1", b"opus-2", b"opus-4"]
    assert_contiguous(wire.packets)
    fanout.end()


def test_direct_protect_matches_pylibsrtp_and_unprotects():
    import os

    from pylibsrtp import Policy, Session

    from odsmedia.media.srtp import direct_protect

    key = os.urandom(28)

    def session(direction: int) -> Session:
        return Session(Policy(key=key, ssrc_type=direction, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))

    packet = bytes([0x80, 102, 0, 7]) + (3000).to_bytes(4, "big") + (1234).to_bytes(4, "big") + os.urandom(1100)
    protected = direct_protect(session(Policy.SSRC_ANY_OUTBOUND))(packet)
    assert protected == session(Policy.SSRC_ANY_OUTBOUND).protect(packet)
    assert session(Policy.SSRC_ANY_INBOUND).unprotect(protected) == packet
    with pytest.raises(ValueError):
        direct_protect(session(Policy.SSRC_ANY_OUTBOUND))(packet * 2)


async def test_a_second_copy_of_an_older_packet_is_not_forwarded_again():
    fanout = PacketFanout("video", "H264", 90000)
    d, wire = subscriber(fanout, ssrc=1, mid="0")
    seq = keyframe(fanout, 7, 10, 0)
    delta(fanout, 7, seq, 3000)
    fanout.on_packet(7, 11, 0, 0, FU_IDR_START, None)      # the publisher retransmits one we have
    assert len(wire.packets) == 4


def test_lean_sender_report_is_aiortcs_wire_format():
    from aiortc.rtp import RtcpPacket, RtcpSenderInfo, RtcpSrPacket

    from odsmedia.media.sender import sender_report

    ours = sender_report(0xDEADBEEF, 0x0123456789ABCDEF, 0xFFFFFFF0, (1 << 32) + 5, 7_000_000_000)
    theirs = bytes(RtcpSrPacket(ssrc=0xDEADBEEF, sender_info=RtcpSenderInfo(
        ntp_timestamp=0x0123456789ABCDEF, rtp_timestamp=0xFFFFFFF0, packet_count=5,
        octet_count=7_000_000_000 & 0xFFFFFFFF)))
    assert ours == theirs
    [parsed] = RtcpPacket.parse(ours)
    assert (parsed.ssrc, parsed.sender_info.packet_count) == (0xDEADBEEF, 5)
