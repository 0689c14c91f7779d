"""Documented messages, closes and methods no other test reached (see test_contract_coverage.py):
signaling `unsubscribe`, trickle `candidate`, `publish.sources` and their refusals; the signaling
4008 close of a reader that stopped reading; the chat
`ping` and the first-frame closes; WHIP OPTIONS on a session URL; the negotiation timeout, a
publication ending mid-negotiation and the transport cap."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import aioice
import orjson
import pytest
from aiortc import RTCSessionDescription

import odsmedia.chat.socket as chat_socket
import odsmedia.rooms.transport as transport_module
import signaling.ws as signaling_ws
from odsmedia.rooms.participant import OUTBOX_LIMIT
from odsmedia.rooms.room import MAX_PARTICIPANT_TRANSPORTS
from odsmedia.rooms.sfu import SFU
from testsupport.peers import SignalingError, peer, whip_offer
from testsupport.rawws import CLOSE, PING, RawWebSocket, server_socket

pytestmark = pytest.mark.timeout(120)
SDP = {"Content-Type": "application/sdp"}
TRICKLED = "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host"   # a valid host candidate nobody listens on


async def refused(client, message: dict) -> tuple[int, str]:
    with pytest.raises(SignalingError) as exc:
        await client.request(message)
    return exc.value.status, exc.value.code


async def test_sources_candidates_and_unsubscribe_over_signaling(client, peers, room_factory):
    room = await room_factory()
    host = await peers.host(client, room)
    pc, offer = await whip_offer()
    answering = None
    try:
        # A source outside the documented four is refused, and nothing is published.
        assert await refused(host.client, {"type": "publish", "sdp": offer, "sources": {"0": "webcam"}}) == \
            (400, "invalid_source")
        assert not client.server.app[SFU].get(room.slug).publications
        answer = await host.client.request({"type": "publish", "sdp": offer, "sources": {"0": "screen"}})
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        sources = {p["kind"]: p["source"] for p in answer["publications"]}
        assert sources == {"video": "screen", "audio": "microphone"}
        publisher_transport = answer["transport"]

        # A viewer answers without candidates (as a browser's trickle answer does), then trickles them.
        viewer = await peers.client(client, room)
        offered = await viewer.request({"type": "subscribe"})
        assert offered["publications"] and offered["transport"]
        transport = offered["transport"]
        answering = peer()
        await answering.setRemoteDescription(RTCSessionDescription(offered["sdp"], "offer"))
        await answering.setLocalDescription(await answering.createAnswer())
        lines = answering.localDescription.sdp.splitlines()
        bare = "\r\n".join(line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates")))
        await viewer.request({"type": "answer", "transport": transport, "sdp": bare + "\r\n"})
        # A second answer to a transport that is no longer waiting for one.
        assert await refused(viewer, {"type": "answer", "transport": transport, "sdp": bare + "\r\n"}) == \
            (409, "unexpected_answer")
        [server_transport] = [t for p in client.server.app[SFU].get(room.slug).participants.values()
                              for t in p.transports.values() if t.id == transport]
        connection = server_transport.pc.getTransceivers()[0].sender.transport.transport._connection

        def host_candidates() -> set[tuple[str, int]]:
            return {(c.host, c.port) for c in connection.remote_candidates if c.type == "host"}

        # (The client's own checks may already have taught the server its address, as a
        # peer-reflexive candidate: the trickled one is at another port so it is not a duplicate.)
        assert host_candidates() == set()
        # Trickle: a well-formed candidate gets no reply (the next request's reply comes first) and
        # reaches the server's ICE agent; the end-of-candidates null is accepted too.
        for candidate in ({"candidate": TRICKLED, "sdpMid": "0", "sdpMLineIndex": 0}, None):
            await viewer.send({"type": "candidate", "transport": transport, "candidate": candidate})
        assert (await viewer.request({"type": "ping"}))["type"] == "pong"
        while not viewer.events.empty():
            assert viewer.events.get_nowait()["type"] != "error"
        assert host_candidates() == {("127.0.0.1", 9)}
        await asyncio.wait_for(server_transport.connected.wait(), 20)   # an answer without candidates connects
        # A malformed one is refused.
        assert await refused(viewer, {"type": "candidate", "transport": transport,
                                             "candidate": {"candidate": "candidate:garbage", "sdpMid": "0"}}) == \
            (400, "invalid_candidate")
        # unsubscribe needs a subscriber transport; then the transport is gone.
        assert await refused(host.client, {"type": "unsubscribe", "transport": publisher_transport}) == \
            (409, "wrong_transport")
        reply = await viewer.request({"type": "unsubscribe", "transport": transport})
        assert reply == {"type": "ok", "ref": reply["ref"], "for": "unsubscribe", "transport": transport}
        assert await refused(viewer, {"type": "unsubscribe", "transport": transport}) == \
            (404, "unknown_transport")
    finally:
        await pc.close()
        if answering is not None:
            await answering.close()


async def test_a_signaling_reader_that_stops_reading_is_closed_with_4008(client, peers, room_factory,
                                                                         token_factory):
    """A participant whose socket stops reading costs the server at most OUTBOX_LIMIT queued
    events: then the server gives up on it, closes with 4008 and it leaves the room."""
    room = await room_factory()
    host = await peers.host(client, room)
    [video] = [p["id"] for p in (await host.publish(fps=5, audio=False))["publications"]]
    slow = await RawWebSocket.open(client.port, f"/rooms/{room.slug}/ws")
    slow.send_json({"type": "join", "ref": 1, "token": await token_factory(room, "viewer")})
    opcode, payload = await slow.frame()
    joined = orjson.loads(payload)
    assert (opcode, joined["type"]) == (1, "joined")
    participant = client.server.app[SFU].get(room.slug).participants[joined["participant"]["id"]]
    # The server's send buffer is pinned small (as an operator's net.ipv4.tcp_wmem would): Linux
    # autotunes it to megabytes, which this reader would take a long time to fill.
    server_socket(client.server, slow.local_port).setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    closes: list[int] = []
    close_socket = participant.close_socket
    participant.close_socket = lambda code: (closes.append(code), close_socket(code))   # observed, passed on

    # The reader stops; the host toggles its mute, and each toggle is an event for everyone.
    sent = 0
    while not closes:
        assert sent < 40 * OUTBOX_LIMIT, "the server kept queueing for a reader that stopped"
        for _ in range(50):
            await host.client.send({"type": "mute" if sent % 2 == 0 else "unmute", "publication": video})
            sent += 1
        await host.client.request({"type": "ping"})   # the host's requests are handled in order
    assert closes == [4008] and sent > OUTBOX_LIMIT

    # Reading again, it gets what was on the wire before the cut, then the close.
    seen = []
    while (frame := await slow.frame())[0] != CLOSE:
        if frame[0] != PING:
            seen.append(orjson.loads(frame[1])["type"])
    assert int.from_bytes(frame[1][:2], "big") == 4008
    assert set(seen) <= {"track_muted", "track_unmuted"} and 0 < len(seen) < sent
    slow.close(frame[1][:2])
    left = await host.client.next_event("participant_left", timeout=15)
    assert left["participant"] == participant.id
    assert participant.id not in client.server.app[SFU].get(room.slug).participants


async def test_signaling_join_timeout_closes_the_socket(client, room_factory, monkeypatch):
    monkeypatch.setattr(signaling_ws, "JOIN_TIMEOUT", 0.3)   # 10 s in production; the path is the same
    room = await room_factory()
    async with client.ws_connect(f"/rooms/{room.slug}/ws") as ws:
        error = await ws.receive_json(timeout=10)
        assert (error["type"], error["code"], error["status"]) == ("error", "join_timeout", 408)
        closing = await ws.receive(timeout=10)
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1000)   # the server's close frame


async def test_chat_ping_and_refused_first_frames(client, room_factory, monkeypatch):
    room = await room_factory()
    url = f"/rooms/{room.slug}/chat"
    async with client.ws_connect(url) as ws:
        await ws.send_json({"type": "join"})
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"
        await ws.send_json({"type": "ping", "ref": "p1"})
        assert await ws.receive_json(timeout=10) == {"type": "ack", "ref": "p1"}
    # Not JSON: refused and closed with 4400.
    async with client.ws_connect(url) as ws:
        await ws.send_str("{not json")
        assert (await ws.receive_json(timeout=10))["error"] == "invalid_json"
        closing = await ws.receive(timeout=10)
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 4400)   # the server's close frame
    # No join in time: refused and closed with 4408.
    monkeypatch.setattr(chat_socket, "JOIN_TIMEOUT", 0.3)
    async with client.ws_connect(url) as ws:
        assert (await ws.receive_json(timeout=10))["error"] == "join_timeout"
        closing = await ws.receive(timeout=10)
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 4408)   # the server's close frame


async def test_whip_session_url_answers_options(client, room_factory, token_factory):
    room = await room_factory()
    host = {"Authorization": f"Bearer {await token_factory(room, 'host')}"}
    pc, offer = await whip_offer()
    try:
        resp = await client.post(f"/rooms/{room.slug}/whip", data=offer, headers={**host, **SDP})
        assert resp.status == 201
        whip_location = resp.headers["Location"]
        resp = await client.options(whip_location)
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert {"DELETE", "OPTIONS"} <= {m.strip() for m in resp.headers["Access-Control-Allow-Methods"].split(",")}
        assert (await client.delete(whip_location, headers=host)).status == 200
    finally:
        await pc.close()


async def test_chat_refuses_bad_ids_and_lifting_what_is_not_there(client, room_factory, token_factory):
    room = await room_factory()
    url = f"/rooms/{room.slug}/chat"
    async with client.ws_connect(url) as viewer:
        await viewer.send_json({"type": "join"})
        subject = (await viewer.receive_json(timeout=10))["you"]["subject"]
        async with client.ws_connect(url) as mod:
            await mod.send_json({"type": "join", "token": await token_factory(room, "moderator")})
            assert (await mod.receive_json(timeout=10))["type"] == "welcome"
            replies = {}
            for ref, message in (("id", {"type": "upvote", "id": "seven"}),
                                 ("timeout", {"type": "end_timeout", "target": subject}),
                                 ("ban", {"type": "unban", "target": subject})):
                await mod.send_json({**message, "ref": ref})
                while (reply := await mod.receive_json(timeout=10)).get("ref") != ref:
                    pass
                replies[ref] = (reply["type"], reply["error"])
    assert replies == {"id": ("error", "invalid_id"), "timeout": ("error", "not_sanctioned"),
                       "ban": ("error", "not_sanctioned")}


async def test_a_chat_ban_removes_the_person_from_the_media_and_keeps_them_out(client, peers, room_factory,
                                                                               token_factory):
    room = await room_factory()
    token = await token_factory(room, "viewer")
    target = await peers.client(client, room, join=False)
    subject = (await target.join(token))["participant"]["subject"]
    async with client.ws_connect(f"/rooms/{room.slug}/chat") as mod:
        await mod.send_json({"type": "join", "token": await token_factory(room, "moderator")})
        assert (await mod.receive_json(timeout=10))["type"] == "welcome"
        await mod.send_json({"type": "ban", "target": subject, "reason": "spam", "ref": 1})
        while (reply := await mod.receive_json(timeout=10)).get("ref") != 1:
            pass
        assert reply["type"] == "ack"
    # The SFU (through room:{slug}:control) kicks the signaling participant, saying it is a ban.
    kicked = await target.next_event("kicked", timeout=15)
    assert (kicked["reason"], kicked["banned"]) == ("spam", True)
    await asyncio.wait_for(target.closed.wait(), 10)
    assert target.close_code == 4001
    # And the gate keeps them out of the room's media.
    again = await peers.client(client, room, join=False)
    assert await refused(again, {"type": "join", "token": token}) == (403, "banned")


class StalledGathering:
    """ICE gathering that waits until released: what a host whose interfaces answer slowly
    does to the server (aioice's own gathering, only held back)."""

    def __init__(self, monkeypatch) -> None:
        self.release = asyncio.Event()
        self.stalled = asyncio.Event()
        gather = aioice.Connection.gather_candidates
        stall = self

        async def gather_candidates(connection) -> None:
            if not stall.release.is_set():
                stall.stalled.set()
                await stall.release.wait()
            await gather(connection)

        monkeypatch.setattr(aioice.Connection, "gather_candidates", gather_candidates)


async def test_negotiation_that_outlasts_its_bound_is_refused_and_leaves_nothing(client, peers, room_factory,
                                                                                monkeypatch):
    monkeypatch.setattr(transport_module, "NEGOTIATION_TIMEOUT", 0.5)   # 10 s in production; the path is the same
    room = await room_factory()
    host = await peers.host(client, room)
    await host.publish(fps=5, audio=False)
    viewer = await peers.viewer(client, room, decode=False)
    stall = StalledGathering(monkeypatch)
    assert await refused(viewer.client, {"type": "subscribe"}) == (504, "negotiation_timeout")
    assert stall.stalled.is_set()
    participant = next(p for p in client.server.app[SFU].get(room.slug).participants.values()
                       if p.id == viewer.client.joined["participant"]["id"])
    assert participant.transports == {}                                  # nothing half-made
    stall.release.set()
    offered = await viewer.client.request({"type": "subscribe"})         # and the next try works
    assert list(participant.transports) == [offered["transport"]]


async def test_a_publication_that_ends_during_negotiation_is_not_subscribed(client, peers, room_factory,
                                                                           monkeypatch):
    room = await room_factory()
    host = await peers.host(client, room)
    published = await host.publish(fps=5, audio=False)
    viewer = await peers.viewer(client, room, decode=False)
    stall = StalledGathering(monkeypatch)
    subscribing = asyncio.ensure_future(refused(viewer.client, {"type": "subscribe"}))
    await asyncio.wait_for(stall.stalled.wait(), 10)                     # the server is negotiating
    reply = await host.client.request({"type": "unpublish", "transport": published["transport"]})
    assert reply["for"] == "unpublish"
    stall.release.set()
    assert await asyncio.wait_for(subscribing, 15) == (409, "publication_ended")
    participant = next(p for p in client.server.app[SFU].get(room.slug).participants.values()
                       if p.id == viewer.client.joined["participant"]["id"])
    assert participant.transports == {}
    assert await refused(viewer.client, {"type": "subscribe"}) == (409, "nothing_published")


async def test_the_seventeenth_transport_of_a_participant_is_refused(client, peers, room_factory):
    room = await room_factory()
    host = await peers.host(client, room)
    await host.publish(fps=5, audio=False)
    viewer = await peers.viewer(client, room, decode=False)
    # Offers left unanswered hold their transports (until the connect timeout releases them).
    offered = [(await viewer.client.request({"type": "subscribe"}))["transport"]
               for _ in range(MAX_PARTICIPANT_TRANSPORTS)]
    assert len(set(offered)) == MAX_PARTICIPANT_TRANSPORTS == 16
    assert await refused(viewer.client, {"type": "subscribe"}) == (429, "too_many_transports")
    # Closing one makes room for one.
    await viewer.client.request({"type": "unsubscribe", "transport": offered[0]})
    assert (await viewer.client.request({"type": "subscribe"}))["transport"] not in offered
    assert await refused(viewer.client, {"type": "subscribe"}) == (429, "too_many_transports")


async def test_whip_session_url_takes_trickled_candidates_with_patch(client, room_factory, token_factory):
    """RFC 9725 4.3 on the publishing side: a WHIP offer without candidates, then a PATCH of
    its candidates on the session URL (If-Match: the ETag) reaches the server's ICE agent."""
    room = await room_factory()
    host = {"Authorization": f"Bearer {await token_factory(room, 'host')}"}
    pc, offer = await whip_offer()
    try:
        lines = offer.splitlines()
        candidates = [line for line in lines if line.startswith("a=candidate:")]
        ufrag = next(line for line in lines if line.startswith("a=ice-ufrag:"))
        mid = next(line for line in lines if line.startswith("a=mid:"))
        bare = "\r\n".join(line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates")))
        resp = await client.post(f"/rooms/{room.slug}/whip", data=bare + "\r\n", headers={**host, **SDP})
        assert resp.status == 201, await resp.text()
        whip_location, etag = resp.headers["Location"], resp.headers["ETag"]
        [transport] = [t for p in client.server.app[SFU].get(room.slug).participants.values()
                       for t in p.transports.values() if t.id == whip_location.rsplit("/", 1)[1]]
        connection = transport.pc.getTransceivers()[0].receiver.transport.transport._connection

        def host_candidates() -> set[tuple[str, int]]:
            return {(c.host, c.port) for c in connection.remote_candidates if c.type == "host"}

        assert candidates and host_candidates() == set()
        frag = "\r\n".join([ufrag, mid, *candidates]) + "\r\n"
        trickle = {"Content-Type": "application/trickle-ice-sdpfrag"}
        stale = await client.patch(whip_location, data=frag, headers={**host, **trickle, "If-Match": '"stale"'})
        assert (stale.status, (await stale.json())["error"]) == (412, "etag_mismatch")
        resp = await client.patch(whip_location, data=frag, headers={**host, **trickle, "If-Match": etag})
        assert (resp.status, resp.headers["ETag"]) == (204, etag)
        assert host_candidates() == {(line.split()[4], int(line.split()[5])) for line in candidates}
        assert (await client.delete(whip_location, headers=host)).status == 200
    finally:
        await pc.close()
