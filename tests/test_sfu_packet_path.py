"""The packet forward path end to end, with real aiortc peers on loopback.

Loss between the server and one viewer is repaired by NACK/RTX from the
publication's history without touching the other viewers; a publisher
that restarts its encoder keeps every viewer playing on one SSRC with
contiguous sequence numbers; sender reports keep audio and video on the
publisher's clock.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import pytest
from aiortc.rtp import RtcpSrPacket

from odsmedia import metrics
from odsmedia.media import aiortc_private as private
from odsmedia.media import native
from odsmedia.rooms.sfu import SFU
from odsmedia.rooms.transport import SubscriberTransport
from testsupport.peers import Viewer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["compiled", "python"], autouse=True)
def send_loop(request, monkeypatch) -> str:
    """Every test here runs with the compiled send loop (media/_fanout.c) and with the
    pure-Python fallback; new subscribers get whichever ``native.available`` says."""
    if request.param == "compiled" and not native.available:
        pytest.skip("the compiled loop is not built")
    if request.param == "python":
        monkeypatch.setattr(native, "available", False)
    return request.param


async def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def assert_consecutive(counters: list[int]) -> None:
    gaps = [(a, b) for a, b in zip(counters, counters[1:]) if b != a + 1]
    assert not gaps, f"frame counter gaps: {gaps[:5]}"


@dataclass
class Wiretap:
    """What one viewer's receiver got off the wire: (ssrc, seq, ts) and sender reports."""

    kind: str
    clock_rate: int
    packets: list[tuple[int, int, int]] = field(default_factory=list)
    reports: list[tuple[int, int, int]] = field(default_factory=list)      # (ssrc, ntp, rtp)


def wiretap(viewer: Viewer) -> dict[str, Wiretap]:
    """Record packets and reports at the viewer's receivers (call right after subscribe)."""
    taps: dict[str, Wiretap] = {}
    for t in viewer.pcs[-1].getTransceivers():
        tap = taps[t.kind] = Wiretap(t.kind, 90000 if t.kind == "video" else 48000)
        receiver = t.receiver
        rtp, rtcp = receiver._handle_rtp_packet, receiver._handle_rtcp_packet

        async def on_rtp(packet, arrival_time_ms, rtp=rtp, tap=tap):
            if packet.payload_type < 110 or tap.kind == "audio":       # media, not RTX
                tap.packets.append((packet.ssrc, packet.sequence_number, packet.timestamp))
            await rtp(packet, arrival_time_ms)

        async def on_rtcp(packet, rtcp=rtcp, tap=tap):
            if isinstance(packet, RtcpSrPacket):
                tap.reports.append((packet.ssrc, packet.sender_info.ntp_timestamp, packet.sender_info.rtp_timestamp))
            await rtcp(packet)

        receiver._handle_rtp_packet = on_rtp
        receiver._handle_rtcp_packet = on_rtcp
    return taps


class PublisherTap:
    """What the publisher put on the wire: RTP timestamps by (ssrc, seq), and its sender reports."""

    def __init__(self, pc) -> None:
        self.rtp: dict[tuple[int, int], int] = {}
        self.reports: list[tuple[int, int, int]] = []      # (ssrc, ntp, rtp)
        transport = pc.getTransceivers()[0].sender.transport      # bundled: one for audio and video
        send_rtp = transport._send_rtp

        async def recording_rtp(data: bytes) -> None:
            if len(data) >= 12 and not 200 <= data[1] <= 206:       # RTP, not RTCP (RFC 5761)
                self.rtp[(int.from_bytes(data[8:12], "big"), int.from_bytes(data[2:4], "big"))] = \
                    int.from_bytes(data[4:8], "big")
            await send_rtp(data)

        transport._send_rtp = recording_rtp
        for transceiver in pc.getTransceivers():
            sender = transceiver.sender
            send_rtcp = sender._send_rtcp

            async def recording_rtcp(packets, send_rtcp=send_rtcp) -> None:
                self.reports += [(p.ssrc, p.sender_info.ntp_timestamp, p.sender_info.rtp_timestamp)
                                 for p in packets if isinstance(p, RtcpSrPacket)]
                await send_rtcp(packets)

            sender._send_rtcp = recording_rtcp


def server_subscriptions(client, slug: str, name: str):
    live = client.server.app[SFU].get(slug)
    return [s for p in live.participants.values() if p.name == name for tr in p.transports.values()
            if isinstance(tr, SubscriberTransport) for s in tr.subscriptions]


async def open_viewer(peers, client, room, name: str) -> tuple[Viewer, dict[str, Wiretap]]:
    viewer = await peers.viewer(client, room, name=name)
    await viewer.subscribe()
    return viewer, wiretap(viewer)


async def test_loss_to_one_viewer_is_repaired_by_nack_and_reports_keep_av_sync(client, peers, room_factory,
                                                                               send_loop):
    room = await room_factory()
    publisher = await peers.host(client, room)
    viewers: list[Viewer] = []
    await publisher.publish(fps=30, width=640, height=360)
    sent = PublisherTap(publisher.pc)
    taps = {}
    for name in ("lossy", "clean 1", "clean 2"):
        viewer, taps[name] = await open_viewer(peers, client, room, name)
        viewers.append(viewer)
    lossy = server_subscriptions(client, room.slug, "lossy")
    await wait_for(lambda: all(s.downstream.active and s.downstream.packets for s in lossy), 20, "lossy viewer live")
    assert all((s.downstream.native is not None) == (send_loop == "compiled") for s in lossy)

    # 5% of what the server sends this viewer (media and repairs alike) never arrives: dropped
    # as it reaches the viewer's DTLS transport, before SRTP (whichever loop sent it: the
    # compiled one writes to the socket itself).  Seeded per kind: the video draws include two
    # losses in a row.
    rngs = {"video": random.Random(2), "audio": random.Random(3)}
    dropped = {"audio": 0, "video": 0}
    pc = viewers[0].pcs[-1]
    kind_of = {c.payloadType: t.kind for t in pc.getTransceivers() 
               for c in getattr(t.receiver, private.RECEIVER_CODECS).values()}
    dtls = pc.getTransceivers()[0].receiver.transport
    handle_rtp_data = dtls._handle_rtp_data

    async def lossy_receive(data: bytes, arrival_time_ms: int) -> None:
        kind = kind_of.get(data[1] & 0x7F)
        if kind is not None and rngs[kind].random() < 0.05:
            dropped[kind] += 1
            return
        await handle_rtp_data(data, arrival_time_ms)

    dtls._handle_rtp_data = lossy_receive
    # The viewer's RTCP (its NACKs, its reports) is handled as it reaches the server
    # (media.feedback): none of it goes through aiortc's receive task there.
    live = client.server.app[SFU].get(room.slug)
    server_transport = next(tr for p in live.participants.values() if p.name == "lossy"
                            for tr in p.transports.values() if isinstance(tr, SubscriberTransport))
    server_dtls = server_transport.pc.getTransceivers()[0].sender.transport
    through_aiortc: list[bytes] = []
    handle_rtcp_data = server_dtls._handle_rtcp_data

    async def counted(data: bytes) -> None:
        through_aiortc.append(data)
        await handle_rtcp_data(data)

    server_dtls._handle_rtcp_data = counted
    answered = metrics.forward_nacks_answered.value
    start = {id(v): len(v.video().counters) for v in viewers}
    await wait_for(lambda: all(len(v.video().counters) - start[id(v)] >= 150 for v in viewers), 60,
                   "150 more frames per viewer")
    for viewer in viewers:
        assert_consecutive(viewer.video().counters)             # the lossy one too: every loss repaired
    lossy_video = next(s for s in lossy if s.kind == "video").downstream
    assert dropped["video"] >= 5
    assert lossy_video.retransmitted >= dropped["video"] - 2     # (a drop in the last moments may be pending)
    assert metrics.forward_nacks_answered.value - answered >= lossy_video.retransmitted   # on /metrics too
    # The lossy viewer's receiver reports say so; the others report nothing lost.
    await wait_for(lambda: lossy_video.cumulative_lost > 0, 5, "a receiver report with the loss")
    assert through_aiortc == []
    for name in ("clean 1", "clean 2"):
        for subscription in server_subscriptions(client, room.slug, name):
            assert subscription.downstream.retransmitted == 0   # nobody else saw a repair
            assert subscription.downstream.cumulative_lost == 0
        for tap in taps[name].values():                         # nor a gap in their numbering
            seqs = [p[1] for p in tap.packets]
            assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))

    # Lip sync: the viewer places audio and video on one timeline through each kind's sender
    # reports (NTP, RTP).  The server keeps the publisher's timeline exactly when every packet
    # and every report it forwards carry the publisher's RTP timestamp moved by the same
    # per-viewer offset, and the reports keep the publisher's NTP time.  Checked on media
    # timestamps, not arrival times, so a loaded machine cannot blur it.
    tap = taps["clean 1"]
    await wait_for(lambda: tap["audio"].reports and tap["video"].reports, 10, "sender reports")
    for subscription in server_subscriptions(client, room.slug, "clean 1"):
        d, publisher_ssrc = subscription.downstream, subscription.publication.fanout.ssrc
        got = tap[subscription.kind]
        for _, seq, ts in got.packets[-100:]:
            assert (ts - d.ts_off) & 0xFFFFFFFF == sent.rtp[(publisher_ssrc, (seq - d.seq_off) & 0xFFFF)]
        publisher_pairs = {(ntp, rtp) for ssrc, ntp, rtp in sent.reports if ssrc == publisher_ssrc}
        # (A report before the first publisher report carries NTP 0: "no pair", ignored by receivers.)
        paired = [(ntp, (rtp - d.ts_off) & 0xFFFFFFFF) for _, ntp, rtp in got.reports if ntp]
        assert paired and [pair for pair in paired if pair not in publisher_pairs] == [], subscription.kind


async def test_publisher_encoder_restart_keeps_every_viewer_playing(client, peers, room_factory):
    room = await room_factory()
    publisher = await peers.host(client, room)
    viewers: list[Viewer] = []
    reply = await publisher.publish(fps=15, audio=False)
    taps = []
    for name in ("first", "second"):
        viewer, tap = await open_viewer(peers, client, room, name)
        viewers.append(viewer)
        taps.append(tap["video"])
    await wait_for(lambda: all(v.video() and len(v.video().counters) >= 15 for v in viewers), 30, "15 frames")
    publication = client.server.app[SFU].get(room.slug).publications[reply["publications"][0]["id"]]
    old_ssrc = publication.fanout.ssrc
    new_ssrc = await publisher.restart_video_encoder()
    assert new_ssrc != old_ssrc
    before = [len(v.video().counters) for v in viewers]
    await wait_for(lambda: all(len(v.video().counters) - b >= 30 for v, b in zip(viewers, before)), 30,
                   "30 frames after the restart")
    assert publication.fanout.restarts == 1 and publication.fanout.ssrc == new_ssrc
    for viewer, tap in zip(viewers, taps):
        assert_consecutive(viewer.video().counters)              # not one picture lost or repeated
        assert len({p[0] for p in tap.packets}) == 1             # one SSRC for the viewer throughout
        seqs = [p[1] for p in tap.packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))   # contiguous across it
        stamps = [p[2] for p in tap.packets]
        assert all((b - a) & 0xFFFFFFFF < 1 << 31 for a, b in zip(stamps, stamps[1:]))   # never backwards


async def test_loss_between_publisher_and_server_is_repaired_for_every_viewer(client, peers, room_factory):
    """Packets the server never got: its NACK (and the viewers', passed upstream) bring the
    publisher's RTX, which the packet tap unwraps and the fan-out sends on in each viewer's numbering."""
    room = await room_factory()
    publisher = await peers.host(client, room)
    await publisher.publish(fps=30, width=640, height=360, audio=False)
    sender = publisher.pc.getTransceivers()[0].sender
    dtls = sender.transport
    send_rtp = dtls._send_rtp
    rng = random.Random(4)
    counts = {"dropped": 0, "rtx": 0}
    media_pt = None

    async def lossy_send_rtp(data: bytes) -> None:
        nonlocal media_pt
        if data[1] & 0x7F >= 96:                         # RTP (RTCP packet types read as 72-78 here)
            pt = data[1] & 0x7F
            media_pt = media_pt or pt
            if pt != media_pt:
                counts["rtx"] += 1
            elif counts["dropped"] < 8 and rng.random() < 0.05:
                counts["dropped"] += 1
                return
        await send_rtp(data)

    viewers = []
    for name in ("one", "two"):
        viewer = await peers.viewer(client, room, name=name)
        await viewer.subscribe()
        viewers.append(viewer)
    await wait_for(lambda: all(v.video() and len(v.video().counters) >= 5 for v in viewers), 20, "viewers live")
    dtls._send_rtp = lossy_send_rtp
    start = [len(v.video().counters) for v in viewers]
    await wait_for(lambda: all(len(v.video().counters) - s >= 150 for v, s in zip(viewers, start)), 60,
                   "150 more frames per viewer")
    assert counts["dropped"] >= 5 and counts["rtx"] >= counts["dropped"] - 1, counts
    for viewer in viewers:
        assert_consecutive(viewer.video().counters)              # every gap filled by the publisher's RTX
