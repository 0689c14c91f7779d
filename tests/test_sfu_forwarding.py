"""Forwarding through the SFU with real aiortc peers on loopback."""

from __future__ import annotations

import asyncio
import time

import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import pytest

from odsmedia.media.forwarder import Downstream
from odsmedia.media.receiver import EncodedFrameTap
from odsmedia.media.sender import ENCODER_ATTR, Packer
from odsmedia.rooms.sfu import SFU
from odsmedia.rooms.transport import PublisherTransport, SubscriberTransport
from testsupport.peers import Received, Viewer

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def forwarding():
    return "packet"


@pytest.fixture
def config(service_urls, tmp_path, forwarding):
    from conftest import make_config

    return make_config(service_urls, tmp_path / "data", ODS_MEDIA_FORWARDING=forwarding)


async def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def codec_calls(monkeypatch):
    """Counts aiortc's decoder/encoder factory calls (every peer in this process)."""
    calls = {"decoders": [], "encoders": []}
    real_decoder = aiortc.rtcrtpreceiver.get_decoder
    real_encoder = aiortc.rtcrtpsender.get_encoder

    def get_decoder(codec):
        calls["decoders"].append(codec.name)
        return real_decoder(codec)

    def get_encoder(codec):
        calls["encoders"].append(codec.name)
        return real_encoder(codec)

    monkeypatch.setattr(aiortc.rtcrtpreceiver, "get_decoder", get_decoder)
    monkeypatch.setattr(aiortc.rtcrtpsender, "get_encoder", get_encoder)
    return calls


def assert_consecutive(counters: list[int]) -> None:
    gaps = [(a, b) for a, b in zip(counters, counters[1:]) if b != a + 1]
    assert not gaps, f"frame counter gaps: {gaps[:5]}"


@pytest.mark.parametrize("forwarding", ["packet", "frame"])
async def test_one_publisher_three_viewers_no_gaps_and_no_server_codec(client, peers, room_factory, codec_calls,
                                                                      forwarding):
    room = await room_factory()
    publisher = await peers.host(client, room)
    viewers: list[Viewer] = []
    reply = await publisher.publish(fps=15)
    assert {p["kind"] for p in reply["publications"]} == {"audio", "video"}
    video_pub = next(p for p in reply["publications"] if p["kind"] == "video")
    assert video_pub["codec"] == "H264"       # preferred over VP8 when offered
    for n in range(3):
        viewer = await peers.viewer(client, room, name=f"viewer {n}")
        joined = viewer.client.joined
        assert {p["id"] for p in joined["publications"]} == {p["id"] for p in reply["publications"]}
        await viewer.subscribe()
        viewers.append(viewer)
    await wait_for(lambda: all(v.video() and len(v.video().counters) >= 30 and v.audio()
                               and v.audio().frames >= 20 for v in viewers), 40, "30 video frames per viewer")
    for viewer in viewers:
        assert_consecutive(viewer.video().counters)
        assert viewer.audio().frames >= 20

    # The server side never decoded or encoded: its receivers are tapped, its senders only pack.
    sfu = client.server.app[SFU]
    live = sfu.get(room.slug)
    server_receivers = [t.receiver for p in live.participants.values() for tr in p.transports.values()
                        if isinstance(tr, PublisherTransport) for t in tr.pc.getTransceivers()]
    server_senders = [t.sender for p in live.participants.values() for tr in p.transports.values()
                      if isinstance(tr, SubscriberTransport) for t in tr.pc.getTransceivers()]
    assert len(server_receivers) == 2 and len(server_senders) == 6
    for receiver in server_receivers:
        tap = receiver._RTCRtpReceiver__decoder_queue
        assert isinstance(tap, EncodedFrameTap) and tap.frames > 0
    subscriptions = [s for p in live.participants.values() for tr in p.transports.values()
                     if isinstance(tr, SubscriberTransport) for s in tr.subscriptions]
    if forwarding == "packet":
        for sender in server_senders:
            assert getattr(sender, ENCODER_ATTR) is None                 # nothing packs per viewer
            assert "_run_rtp" in vars(sender) and "_retransmit" in vars(sender)
        for subscription in subscriptions:
            d = subscription.downstream
            assert isinstance(d, Downstream) and d.active and d.packets > 0 and d.resumes == 1
        # NACK: answered from the publication's history through the viewer's own numbering.
        video = next(s for s in subscriptions if s.kind == "video")
        d = video.downstream
        video_sender = next(s for s in server_senders if s.track is video)
        last_out = (video.publication.fanout.max_seq + d.seq_off) & 0xFFFF
        await video_sender._retransmit(last_out)
        assert d.retransmitted == 1
        assert d.rtx_pt is not None                                       # negotiated: sent as RTX
    else:
        for sender in server_senders:
            packer = getattr(sender, ENCODER_ATTR)
            assert isinstance(packer, Packer) and packer.frames > 0
            assert "_run_rtp" in vars(sender)                  # the lean loop, not aiortc's
            assert getattr(sender, "_RTCRtpSender__packet_count") >= packer.frames
        # NACK: aiortc's retransmission path still finds the lean loop's packets.
        video_sender = next(s for s in server_senders if s.kind == "video")
        history = getattr(video_sender, "_RTCRtpSender__rtp_history")
        dtls = video_sender.transport
        sent_before = getattr(dtls, "_RTCDtlsTransport__tx_packets")
        latest = max(history.values(), key=lambda p: p.sequence_number if p else -1)
        await video_sender._retransmit(latest.sequence_number)
        assert getattr(dtls, "_RTCDtlsTransport__tx_packets") >= sent_before + 1
    # The packet path's counts reach the stats at its next sender-report refresh: polled.
    async def packets_sent() -> bool:
        return any(getattr(s, "packetsSent", 0) > 0 for s in (await video_sender.getStats()).values())

    deadline = time.monotonic() + 10
    while not await packets_sent():
        assert time.monotonic() < deadline, "the sender's stats never counted a packet"
        await asyncio.sleep(0.05)
    # Decoders: exactly the 3 viewers x (audio + video); encoders: exactly the publisher's two.
    assert sorted(codec_calls["decoders"]) == sorted(["H264", "opus"] * 3)
    assert sorted(codec_calls["encoders"]) == ["H264", "opus"]


async def test_vp8_publisher_is_forwarded_as_vp8(client, peers, room_factory, codec_calls):
    room = await room_factory()
    publisher = await peers.host(client, room)
    reply = await publisher.publish(fps=15, audio=False, codec="VP8")
    assert [p["codec"] for p in reply["publications"]] == ["VP8"]
    viewer = await peers.viewer(client, room)
    offer = await viewer.subscribe()
    assert "VP8/90000" in offer["sdp"] and "H264" not in offer["sdp"]   # pinned to the publisher's codec
    await wait_for(lambda: viewer.video() and len(viewer.video().counters) >= 20, 30, "20 VP8 frames")
    assert_consecutive(viewer.video().counters)
    assert codec_calls["decoders"] == ["VP8"] and codec_calls["encoders"] == ["VP8"]


async def test_viewer_gets_publications_that_appear_later_from_two_publishers(client, peers, room_factory):
    room = await room_factory()
    viewer = await peers.viewer(client, room)
    assert viewer.client.joined["publications"] == []
    for _ in range(2):       # host and co-host go live after the viewer joined
        publisher = await peers.host(client, room)
        reply = await publisher.publish(fps=15, audio=False)
        event = await viewer.client.next_event("track_published")
        assert event["publication"]["id"] == reply["publications"][0]["id"]
        await viewer.subscribe([event["publication"]["id"]])
    assert len(viewer.pcs) == 2
    await wait_for(lambda: len(viewer.received) == 2
                   and all(len(r.counters) >= 15 for r in viewer.received.values()), 30, "both publications")
    for received in viewer.received.values():
        assert_consecutive(received.counters)


async def test_a_late_viewer_gets_two_videos_and_two_audios_on_one_transport(client, peers, room_factory):
    """Two live videos (a camera and a screen, or two hosts) and a viewer who joins after:
    one subscriber transport with four m-lines, and every one of them carries media.  aiortc's
    "balanced" bundle policy left the second video m-line on a stopped transport (issue 14)."""
    room = await room_factory()
    video_ids = []
    for _ in range(2):
        publisher = await peers.host(client, room)
        reply = await publisher.publish(fps=15, audio=True)
        video_ids += [p["id"] for p in reply["publications"] if p["kind"] == "video"]
    viewer = await peers.viewer(client, room)
    offer = await viewer.subscribe()          # all four publications, one transport
    assert len(viewer.pcs) == 1 and len(offer["publications"]) == 4
    await wait_for(lambda: all(len(viewer.received.get(v, Received("video")).counters) >= 15 for v in video_ids)
                   and sum(r.frames > 0 for r in viewer.received.values() if r.kind == "audio") == 2,
                   30, "both videos and both audios on the late viewer's one transport")
    for video in video_ids:
        assert_consecutive(viewer.received[video].counters)
