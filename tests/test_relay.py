"""One room served by several nodes: an origin and relays fed over pipes (issue 18).

Nodes here are separate apps in this process, each with its own data dir
(node id), HTTP port, public URL and relay sockets, on the real Redis and
PostgreSQL; media flows between them over real UDP pipes on loopback, and
the viewers are aiortc peers that decode the frame counter.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

from conftest import make_config
from odsmedia.app import make_app
from odsmedia.rooms.relay import CLOSE_MOVED, RelayRoom
from odsmedia.rooms.sfu import SFU
from test_sfu_packet_path import assert_consecutive, wait_for
from testsupport.peers import Viewer, peer

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def make_nodes(aiohttp_server, aiohttp_client, service_urls, tmp_path):
    """``await make_nodes("a", "b", ...)``: app nodes on one Redis, viewers relayed from the first
    viewer on (rooms.relay_threshold 0)."""
    async def make(*names: str, **overrides: str):
        nodes = []
        for name in names:
            port = unused_port()
            config = make_config(service_urls, tmp_path / name, ODS_PUBLIC_URL=f"http://127.0.0.1:{port}",
                                 ODS_HTTP_PORT=str(port), ODS_ROOMS_RELAY_THRESHOLD="0", **overrides)
            nodes.append(await aiohttp_client(await aiohttp_server(make_app(config), port=port)))
        return nodes

    return make


def sfu(node):
    return node.server.app[SFU]


def hub(node):
    return sfu(node).relays


async def playing(peers, node, room, name: str, frames: int = 1) -> Viewer:
    viewer = await peers.viewer(node, room, name=name)
    await viewer.subscribe()
    await wait_for(lambda: viewer.video() is not None and len(viewer.video().counters) >= frames, 30,
                   f"{name}: {frames} frames")
    return viewer


async def test_viewers_on_origin_and_relays_play_every_frame(make_nodes, peers, room_factory):
    """Origin A, relay B fed by A, relay C fed by B (a tree): viewers on all three decode every
    frame; A feeds one pipe per publication to B only, B one to C; a WHEP player on C and a late
    joiner on B play too; the relay rooms' snapshots list the origin's publications."""
    a, b, c = await make_nodes("a", "b", "c")
    sfu(c).placement.relay_source = lambda other, role: None if role == "host" else hub(b).node_id
    room = await room_factory()
    publisher = await peers.host(a, room)
    reply = await publisher.publish(fps=15)
    ids = sorted(p["id"] for p in reply["publications"])

    on_a = await playing(peers, a, room, "on a")
    client_b = await peers.client(b, room, name="on b")
    assert sorted(p["id"] for p in client_b.joined["publications"]) == ids
    on_b = Viewer(client_b)
    await on_b.subscribe()
    on_c = await playing(peers, c, room, "on c")
    await wait_for(lambda: on_b.video() is not None and len(on_b.video().counters) >= 1, 30, "b plays")
    assert isinstance(sfu(b).get(room.slug), RelayRoom) and isinstance(sfu(c).get(room.slug), RelayRoom)
    assert sfu(b).get(room.slug).source == hub(a).node_id
    assert sfu(c).get(room.slug).source == hub(b).node_id

    # WHEP on the relay of the relay.
    whep = peer()
    whep.addTransceiver("video", direction="recvonly")
    whep.addTransceiver("audio", direction="recvonly")
    got_video = asyncio.Event()
    whep.on("track", lambda track: got_video.set() if track.kind == "video" else None)
    await whep.setLocalDescription(await whep.createOffer())
    async with aiohttp.ClientSession() as http:
        resp = await http.post(str(c.make_url(f"/rooms/{room.slug}/whep")), data=whep.localDescription.sdp,
                               headers={"Content-Type": "application/sdp"})
        assert resp.status == 201, await resp.text()
        answer = await resp.text()
    from aiortc import RTCSessionDescription
    await whep.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await asyncio.wait_for(got_video.wait(), 20)
    video_track = next(t.receiver.track for t in whep.getTransceivers() if t.kind == "video")
    from testsupport.peers import read_counter
    first = read_counter(await asyncio.wait_for(video_track.recv(), 20))
    assert first > 0

    viewers = [on_a, on_b, on_c]
    start = [len(v.video().counters) for v in viewers]
    await wait_for(lambda: all(len(v.video().counters) - s >= 45 for v, s in zip(viewers, start)), 60,
                   "45 more frames on every node")
    late = await playing(peers, b, room, "late on b")
    for viewer in [*viewers, late]:
        assert_consecutive(viewer.video().counters)
    # The origin sees one subscriber per relay per publication, and so does the first relay.
    assert {node: len(served.pipes) for node, served in hub(a).served[room.slug].items()} == {hub(b).node_id: 2}
    assert {node: len(served.pipes) for node, served in hub(b).served[room.slug].items()} == {hub(c).node_id: 2}
    assert hub(a).rebuilds == hub(b).rebuilds == hub(c).rebuilds == 0
    # Sender reports travel down the tree: each relay's fan-out holds the publisher's clock pair
    # (its own viewers' reports carry it, for lip sync), the NTP side as the publisher sent it.
    relayed = [(pub.kind, pub.fanout) for node in (b, c) for pub in sfu(node).get(room.slug).publications.values()]
    await wait_for(lambda: all(f._sr is not None for _, f in relayed), 15, "sender reports on both relays")
    origin_ntp = {pub.kind: pub.fanout._sr[0] >> 32 for pub in sfu(a).get(room.slug).publications.values()}
    for kind, fanout in relayed:
        assert abs(origin_ntp[kind] - (fanout._sr[0] >> 32)) <= 5, kind     # seconds: reports come every ~1 s
    # A publisher is always sent to the origin.
    host_on_b = await peers.client(b, room, role="host", join=False)
    await host_on_b.send({"type": "join", "token": await peers.mint(room, "host")})
    refused = await host_on_b.next_event("error")
    assert refused["code"] == "room_on_other_node" and refused["node_url"] == str(a.make_url("")).rstrip("/")

    # The three nodes share this process's registry: B and C relay two publications each, A and B
    # feed two pipes each.
    metrics = await scrape(b)
    assert metrics["ods_relayed_publications"] == 4
    assert metrics['ods_relay_pipes{direction="in"}'] == metrics['ods_relay_pipes{direction="out"}'] == 4
    assert metrics['ods_relay_pipe_packets_total{direction="in"}'] > 0
    # Each packet carries at least its 12-byte RTP header.
    assert metrics['ods_relay_pipe_bytes_total{direction="in"}'] >= \
        12 * metrics['ods_relay_pipe_packets_total{direction="in"}']
    assert metrics['ods_relay_pipe_lost_total{direction="in"}'] == 0
    await whep.close()


async def scrape(node) -> dict[str, float]:
    """The ods_* samples on a node's /metrics (nodes in this process share one registry)."""
    text = await (await node.get("/metrics")).text()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith("ods_")}


@pytest.mark.parametrize("srtp", ["false", "true"])
async def test_pipe_loss_is_repaired_by_nacks_to_the_origin(make_nodes, peers, room_factory, srtp):
    """5% of the video packets on the pipe A -> B never arrive (a deterministic drop hook): B's
    viewers NACK, B asks A up the pipe, A answers from its one history; B's viewer misses no frame.
    Plain RTP, and SRTP with the keys from the control exchange (a repair is no replay)."""
    a, b = await make_nodes("a", "b", ODS_RELAY_SRTP=srtp)
    dropped: set[int] = set()
    viewing = [False]        # losses before B's viewer plays are nobody's to repair

    def drop_for(slug, publication):
        if publication.kind != "video":
            return None

        def drop(seq: int) -> bool:
            if viewing[0] and seq % 20 == 7 and seq not in dropped:   # the first copy only: the repair gets through
                dropped.add(seq)
                return True
            return False
        return drop

    hub(b).drop = drop_for
    room = await room_factory()
    publisher = await peers.host(a, room)
    await publisher.publish(fps=30, width=640, height=360, audio=False)
    on_b = await playing(peers, b, room, "on b")
    before = await scrape(b)
    viewing[0] = True
    start = len(on_b.video().counters)
    await wait_for(lambda: len(on_b.video().counters) - start >= 150, 60, "150 frames on b")
    assert_consecutive(on_b.video().counters)
    relay = sfu(b).get(room.slug)
    sink = next(iter(relay.publications.values())).pipe
    source = next(pipe for _, pipe in hub(a).served[room.slug][hub(b).node_id].pipes.values())
    assert sink.crypto.plain is (srtp == "false") and source.crypto.plain is (srtp == "false")
    assert len(dropped) >= 5
    assert sink.stats.lost >= len(dropped) - 2          # counted as lost by the pipe's receiving end
    assert sink.stats.nacks >= len(dropped) - 2          # asked up the pipe
    assert source.downstream.retransmitted >= len(dropped) - 2    # answered by the origin's history
    assert hub(b).rebuilds == 0
    # And on /metrics: sequence numbers asked up the pipe (in) and answered by the origin (out).
    after = await scrape(b)
    for direction in ("in", "out"):
        name = f'ods_relay_pipe_nacks_total{{direction="{direction}"}}'
        assert after[name] - before[name] >= len(dropped) - 2, direction


async def test_stalled_pipe_is_rebuilt(make_nodes, peers, room_factory):
    """A pipe that carries nothing for relay.stall_seconds while its publication lives is rebuilt
    (a new pipe, a new stream the relay's viewers resume on at a keyframe)."""
    a, b = await make_nodes("a", "b", ODS_RELAY_STALL_SECONDS="1")
    room = await room_factory()
    publisher = await peers.host(a, room)
    await publisher.publish(fps=15, audio=False)
    on_b = await playing(peers, b, room, "on b", frames=5)
    relay = sfu(b).get(room.slug)
    publication = next(iter(relay.publications.values()))
    stalled = publication.pipe
    rebuilt_before = (await scrape(b))["ods_relay_pipe_rebuilds_total"]
    stalled.drop = lambda seq: True                    # nothing gets through any more
    await wait_for(lambda: publication.rebuilds == 1, 15, "the pipe rebuilt")
    assert (await scrape(b))["ods_relay_pipe_rebuilds_total"] == rebuilt_before + 1
    assert publication.pipe is not stalled and stalled.closed
    before = len(on_b.video().counters)
    await wait_for(lambda: len(on_b.video().counters) - before >= 15, 30, "frames after the rebuild")
    assert hub(b).rebuilds == 1
    # The origin closed the stalled pipe's source end: one pipe to B again.
    await wait_for(lambda: len(hub(a).served[room.slug][hub(b).node_id].pipes) == 1, 10, "old source closed")


async def test_origin_ending_ends_the_relay_room(make_nodes, peers, room_factory):
    """The origin's room ends (its last participant leaves): relay viewers see the tracks go and
    are told the room moved (error room_moved, close 1012), and the relay room is gone."""
    a, b = await make_nodes("a", "b")
    room = await room_factory()
    publisher = await peers.host(a, room)
    reply = await publisher.publish(fps=15, audio=False)
    on_b = await playing(peers, b, room, "on b")
    await publisher.close()
    await publisher.client.close()
    gone = await on_b.client.next_event("track_unpublished")
    assert gone["publication"] == reply["publications"][0]["id"]
    moved = await on_b.client.next_event("error")
    assert moved["code"] == "room_moved"
    await asyncio.wait_for(on_b.client.closed.wait(), 10)
    assert on_b.client.ws.close_code == CLOSE_MOVED
    await wait_for(lambda: sfu(b).get(room.slug) is None, 10, "relay room gone")
    assert room.slug not in hub(a).served


async def test_viewer_below_threshold_is_sent_to_the_origin(make_nodes, peers, room_factory):
    """Below rooms.relay_threshold another node answers room_on_other_node as before; at it, the
    viewer is served there.  The threshold is weighed against the origin's published viewer count."""
    a, b = await make_nodes("a", "b")
    sfu(b).placement.relay_threshold = 2
    room = await room_factory()
    publisher = await peers.host(a, room)
    await publisher.publish(fps=15, audio=False)
    first = await peers.viewer(a, room, name="first on a")
    refused = await peers.client(b, room, join=False)
    await refused.send({"type": "join"})
    error = await refused.next_event("error")
    assert error["code"] == "room_on_other_node"
    await peers.viewer(a, room, name="second on a")
    redis = sfu(a).bus.redis
    key = sfu(a).bus.key("room", room.slug, "viewers")

    async def published() -> bytes | None:
        return await redis.get(key)
    deadline = time.monotonic() + 10
    while await published() != b"2":
        assert time.monotonic() < deadline, "viewer count not published"
        await asyncio.sleep(0.05)
    relayed = await playing(peers, b, room, "third on b")
    assert isinstance(sfu(b).get(room.slug), RelayRoom)
    assert relayed.video().counters
    assert first.client.joined["type"] == "joined"


async def test_relay_mirrors_publications_and_mutes(make_nodes, peers, room_factory):
    """A relay viewer who joined before anything was published sees the publication appear,
    plays it, sees the host's mute and unmute, and plays on after the unmute."""
    a, b = await make_nodes("a", "b")
    room = await room_factory()
    publisher = await peers.host(a, room)
    early = await peers.viewer(b, room, name="early on b")
    assert early.client.joined["publications"] == []
    assert isinstance(sfu(b).get(room.slug), RelayRoom)
    reply = await publisher.publish(fps=15, audio=False)
    video_id = reply["publications"][0]["id"]
    published = await early.client.next_event("track_published")
    assert published["publication"]["id"] == video_id and published["publication"]["kind"] == "video"
    await early.subscribe()
    await wait_for(lambda: early.video() is not None and len(early.video().counters) >= 10, 30, "10 frames")
    await publisher.client.request({"type": "mute", "publication": video_id})
    muted = await early.client.next_event("track_muted")
    assert muted == {"type": "track_muted", "publication": video_id, "by": "self"}
    assert sfu(b).get(room.slug).snapshot()["publications"][0]["muted_by"] == "self"
    await publisher.client.request({"type": "unmute", "publication": video_id})
    unmuted = await early.client.next_event("track_unmuted")
    assert unmuted["publication"] == video_id
    before = len(early.video().counters)
    await wait_for(lambda: len(early.video().counters) - before >= 10, 30, "10 frames after the unmute")
    counters = early.video().counters
    assert all(b > a for a, b in zip(counters, counters[1:]))      # never backwards across the mute
    assert hub(b).rebuilds == 0                                     # a muted pipe is not a stalled one


async def test_pipe_takes_only_authentic_packets_from_its_source():
    """A pipe's receiving end counts and forwards only what its source sent: a copy from another
    address and, with SRTP, a packet under another key from the source's own address are dropped."""
    import socket

    from odsmedia.media.forwarder import PacketFanout
    from odsmedia.media.pipe import PipeCrypto, PipeSink, PipeSource, new_keys

    origin, relay = PacketFanout("video", "VP8", 90000), PacketFanout("video", "VP8", 90000)
    down, up = new_keys()
    sink = PipeSink(relay, crypto=PipeCrypto(up, down))
    sink_addr = await sink.open("127.0.0.1")
    seen: list[bytes] = []
    source = PipeSource(origin, 96, remote=sink_addr, request_keyframe=lambda reason: None,
                        crypto=PipeCrypto(down, up))
    sent: list[bytes] = []
    source_addr = await source.open("127.0.0.1")
    sink.connect(source_addr)
    send = source.downstream.sendto
    source.downstream.sendto = lambda data, addr: (sent.append(bytes(data)), send(data, addr))
    relay_on_packet = relay.on_packet
    relay.on_packet = lambda *args: (seen.append(args[4]), relay_on_packet(*args))
    keyframe = b"\x10\x00" + bytes(100)
    for seq in range(5):
        origin.on_packet(7, seq, seq * 3000, 1, keyframe, None)
    await wait_for(lambda: sink.stats.packets == 5, 5, "five packets through the pipe")
    # An authentic-looking next packet (the pipe's SSRC, the right key) from another address,
    # then one from the source's address under another key.
    ahead = ((int.from_bytes(sent[-1][2:4], "big") + 10) & 0xFFFF).to_bytes(2, "big")
    header = bytes([0x80, 96]) + ahead + sent[-1][4:12]
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.sendto(PipeCrypto(down, up).protect(header + keyframe), sink_addr)
    source.endpoint.transport.sendto(PipeCrypto(*new_keys()).protect(header + keyframe), sink_addr)
    last = b"\x10\x00" + b"\x01" * 100
    origin.on_packet(7, 5, 5 * 3000, 1, last, None)          # then a real one (sent after both: read after them)
    await wait_for(lambda: last in seen, 5, "the sixth packet")
    stranger.close()
    assert seen == [keyframe] * 5 + [last] and sink.stats.packets == 6 and sink.stats.lost == 0
    source.close()
    sink.close()
