"""The compiled send loop (media/_fanout.c) and the pure-Python fallback put the same
bytes on the wire.

Two identical publications, each with the same subscribers (same SRTP keys,
SSRCs, payload types, extension ids), one served by the compiled loop and one
by the Python loop, are fed the same packets: keyframe gating, a late
joiner, audio levels, a publisher restart, a mute and a NACK.  Each
subscriber's socket is a real UDP socket on loopback; the datagrams both
loops sent must be equal byte for byte, and they must decrypt (with the
subscriber's inbound SRTP session) to the expected RTP.
"""

from __future__ import annotations

import os
import socket

import pytest
from aiortc import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from pylibsrtp import Policy, Session

from odsmedia import metrics
from odsmedia.media import native
from odsmedia.media.forwarder import Downstream, PacketFanout
from odsmedia.media.srtp import direct_protect

pytestmark = pytest.mark.skipif(not native.available, reason="the compiled loop is not built (no C compiler)")

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
STAP_SPS_PPS = bytes([24, 0, 3, 0x67, 0x42, 0x1F, 0, 2, 0x68, 0xCE])
FU_IDR_START = bytes([0x7C, 0x85]) + b"idr-a" * 200
FU_IDR_END = bytes([0x7C, 0x45]) + b"idr-b"
P_SLICE = bytes([0x41, 0x9A]) + b"p" * 900


def ext_map(uris: tuple[str, ...], first_id: int) -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=first_id + i, uri=u) for i, u in enumerate(uris)]))
    return m


class Viewer:
    """A subscriber's far end: a UDP socket on loopback and its inbound SRTP session."""

    def __init__(self, key: bytes, uris: tuple[str, ...], first_id: int) -> None:
        self.key = key
        self.extensions = ext_map(uris, first_id)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.inbound = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                      srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))

    def received(self, count: int) -> list[bytes]:
        return [self.sock.recv(4096) for _ in range(count)]

    def nothing_more(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(5)
        return False


def serve(kind: str, codec: str, clock: int, viewers: list[Viewer], use_native: bool, sender: socket.socket,
          join: list[int]) -> tuple[PacketFanout, list[Downstream]]:
    fanout = PacketFanout(kind, codec, clock)
    downstreams = []
    for i, viewer in enumerate(viewers):
        d = Downstream(fanout)
        # Deterministic starting points, so both publications number alike.
        d.next_seq, d.next_ts, d.rtx_seq = 1000 * (i + 1), 77_000 * (i + 1), 500 + i
        d.configure(ssrc=0x1000 + i, rtx_ssrc=0x2000 + i, pt=100 + i, rtx_pt=110 + i,
                    ext_map=viewer.extensions, mid=str(i))
        session = Session(Policy(key=viewer.key, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                 srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
        d.connect(direct_protect(session), sender.sendto, viewer.sock.getsockname(),
                  srtp_session=session if use_native else None, fd=sender.fileno() if use_native else -1)
        assert (d.native is not None) is use_native
        downstreams.append(d)
        if i not in join:
            fanout.add(d)
    return fanout, downstreams


def feed(kind: str, fanout: PacketFanout, late: Downstream) -> int:
    """The same publisher traffic for both loops; returns how many copies each viewer 0 got."""
    for d in [*fanout.downstreams, late]:
        d.held_at = 0.0                         # resume offsets depend on the time held (see Clock)
    if kind == "video":
        seq, ts = 65533, 4_294_960_000          # both wrap
        for payload, marker in ((P_SLICE, 1), (STAP_SPS_PPS, 0), (FU_IDR_START, 0), (FU_IDR_END, 1)):
            fanout.on_packet(7, seq & 0xFFFF, ts & 0xFFFFFFFF, marker, payload, None)
            seq += 1
            ts += 3000 if marker else 0
        fanout.add(late)                        # a late joiner waits for the next keyframe
        fanout.on_packet(7, seq & 0xFFFF, ts & 0xFFFFFFFF, 1, P_SLICE, None)
        seq, ts = seq + 1, ts + 3000
        fanout.on_packet(9, 40000, 123, 0, STAP_SPS_PPS, None)        # a publisher restart: new SSRC
        fanout.on_packet(9, 40001, 123, 1, FU_IDR_START, None)
        fanout.on_packet(9, 40002, 3123, 1, P_SLICE, None)
        return 7
    seq, ts = 10, 960
    for level in (0x80 | 30, 40, None, 0x7F):
        fanout.on_packet(3, seq, ts, 0, b"opus" * 30, level)
        seq, ts = seq + 1, ts + 960
    fanout.add(late)
    fanout.pause(True)
    fanout.on_packet(3, seq, ts, 0, b"muted", 10)
    fanout.pause(False)
    fanout.on_packet(3, seq + 1, ts + 960, 1, b"opus-after" * 10, 50)
    return 5


class Clock:
    """The forwarder's time.monotonic, stepping 20 ms per call: both runs see the same times."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        self.now += 0.02
        return self.now


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    from odsmedia.media import forwarder

    monkeypatch.setattr(forwarder, "time", Clock())


def forwarder_clock() -> Clock:
    from odsmedia.media import forwarder

    return forwarder.time  # type: ignore[return-value]


def run(kind: str, codec: str, clock: int, use_native: bool, keys: list[bytes], uris: tuple[str, ...]):
    viewers = [Viewer(k, uris, first_id=1 + i) for i, k in enumerate(keys)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fanout, downstreams = serve(kind, codec, clock, viewers, use_native, sender, join=[len(keys) - 1])
    expected = feed(kind, fanout, downstreams[-1])
    # A NACK from viewer 0 for its second-last packet, answered from the history (RTX).
    first = downstreams[0]
    return fanout, downstreams, viewers, sender, expected, first


@pytest.mark.parametrize("kind,codec,clock,uris", [
    ("video", "H264", 90000, (MID_URI,)),
    ("audio", "opus", 48000, (MID_URI, LEVEL_URI)),
])
async def test_compiled_and_python_loops_send_identical_bytes(kind, codec, clock, uris):
    keys = [os.urandom(28) for _ in range(3)]
    wires = {}
    for use_native in (True, False):
        Clock.__init__(forwarder_clock())
        fanout, downstreams, viewers, sender, expected, first = run(kind, codec, clock, use_native, keys, uris)
        got = [viewers[0].received(expected), viewers[1].received(expected)]
        late_count = 3 if kind == "video" else 1
        got.append(viewers[2].received(late_count))
        plain = [RtpPacket.parse(viewers[0].inbound.unprotect(g)) for g in got[0]]
        last_seq = plain[-1].sequence_number
        await first.retransmit((last_seq - 1) & 0xFFFF)
        got.append(viewers[0].received(1))
        assert all(v.nothing_more() for v in viewers)
        assert first.packets == expected
        assert first.octets == sum(len(p.payload) for p in plain)
        wires[use_native] = (got, viewers)
        for d in downstreams:
            d.disconnect()
        fanout.end()
        sender.close()
    native_wire, python_wire = wires[True][0], wires[False][0]
    assert native_wire == python_wire
    # And they are what a subscriber expects: its SSRC, payload type, contiguous numbers, MID.
    viewers = wires[False][1]
    for i in range(3):
        fresh = Session(Policy(key=keys[i], ssrc_type=Policy.SSRC_ANY_INBOUND,
                               srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
        packets = [RtpPacket.parse(fresh.unprotect(data), viewers[i].extensions) for data in native_wire[i]]
        assert {(p.ssrc, p.payload_type, p.extensions.mid) for p in packets} == {(0x1000 + i, 100 + i, str(i))}
        seqs = [p.sequence_number for p in packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:])), seqs
        if kind == "audio" and i < 2:
            assert [p.extensions.audio_level for p in packets] == [(True, 30), (False, 40), None, (False, 127),
                                                                   (False, 50)]
    rtx = RtpPacket.parse(Session(Policy(key=keys[0], ssrc_type=Policy.SSRC_ANY_INBOUND,
                                         srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM)).unprotect(
        native_wire[3][0]), viewers[0].extensions)
    assert (rtx.ssrc, rtx.payload_type) == (0x2000, 110)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_counters_move_and_slots_on_one_socket_share_one_descriptor():
    keys = [os.urandom(28) for _ in range(2)]
    before = (metrics.forward_packets.value, metrics.forward_bytes.value, metrics.forward_gated_drops.value)
    fds = open_descriptors()
    fanout, downstreams, viewers, sender, expected, _ = run("video", "H264", 90000, True, keys, (MID_URI,))
    # Two viewer sockets, the sending socket, and one duplicate for both slots on it.
    assert open_descriptors() == fds + 2 + 1 + 1
    got = viewers[0].received(expected)
    # 7 copies to viewer 0, 3 to the late joiner; gated: the first P slice (viewer 0) and the
    # one after the late joiner came (before its keyframe); at the restart both resume at once.
    assert metrics.forward_packets.value - before[0] == expected + 3
    assert metrics.forward_bytes.value - before[1] == sum(map(len, got)) + sum(map(len, viewers[1].received(3)))
    assert metrics.forward_gated_drops.value - before[2] == 2
    assert native.NativeSlot.counts(downstreams[0].native)[3] == 0          # no SRTP or socket errors
    downstreams[0].disconnect()
    assert open_descriptors() == fds + 4                                    # the other slot still uses it
    downstreams[1].disconnect()
    assert all(d.native is None for d in downstreams)
    assert open_descriptors() == fds + 3                                    # the duplicate is closed
    fanout.end()
    sender.close()


async def test_a_subscriber_the_slot_cannot_hold_is_served_by_the_python_loop():
    viewer = Viewer(os.urandom(28), (MID_URI,), first_id=1)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fanout = PacketFanout("audio", "opus", 48000)
    d = Downstream(fanout)
    d.configure(ssrc=5, rtx_ssrc=6, pt=111, rtx_pt=None, ext_map=viewer.extensions, mid="0")
    session = Session(Policy(key=viewer.key, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                             srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
    port = viewer.sock.getsockname()[1]
    # A host name, not a numeric address: the C slot refuses it; the socket's sendto resolves it.
    d.connect(direct_protect(session), sender.sendto, ("localhost", port), srtp_session=session, fd=sender.fileno())
    assert d.native is None and d.active
    fanout.add(d)
    fanout.on_packet(3, 1, 960, 0, b"opus" * 20, None)
    [data] = viewer.received(1)
    assert RtpPacket.parse(viewer.inbound.unprotect(data)).payload == b"opus" * 20
    d.disconnect()
    fanout.end()
    sender.close()
