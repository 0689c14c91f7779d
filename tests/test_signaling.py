"""WebSocket signaling: validation, typed errors, room events, moderation."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import refusal
from odsmedia.keys import BUS
from odsmedia.rooms.sfu import SFU
from testsupport.peers import SignalingClient, SignalingError

pytestmark = pytest.mark.timeout(60)


async def raw_reply(c: SignalingClient, text: str) -> dict:
    await c.ws.send_str(text)
    return await asyncio.wait_for(c.events.get(), 5)


async def test_invalid_messages_get_typed_errors(client, peers, room_factory):
    room = await room_factory()
    c = await peers.client(client, room, join=False)
    assert (await raw_reply(c, "{nope"))["code"] == "invalid_message"
    assert (await raw_reply(c, "[1, 2]"))["code"] == "invalid_message"
    err = await raw_reply(c, '{"type": "dance", "ref": "r1"}')
    assert err == {"type": "error", "code": "unknown_type", "message": err["message"], "status": 400, "ref": "r1"}
    with pytest.raises(SignalingError) as exc:
        await c.request({"type": "subscribe"})
    assert exc.value.code == "not_joined"
    joined = await c.join(name="  Ada   L. ")
    assert joined["participant"]["name"] == "Ada L." and joined["participant"]["role"] == "viewer"
    assert joined["room"]["slug"] == room.slug and joined["publications"] == []
    for message, code in [
        ({"type": "join"}, "already_joined"),
        ({"type": "publish", "sdp": "v=0"}, "not_a_publisher"),
        ({"type": "subscribe"}, "nothing_published"),
        ({"type": "subscribe", "publications": "all"}, "invalid_message"),
        ({"type": "subscribe", "publications": ["PUnothing"]}, "unknown_publication"),
        ({"type": "answer", "transport": "TRnone", "sdp": "v=0"}, "unknown_transport"),
        ({"type": "mute", "publication": "PUnothing"}, "unknown_publication"),
        ({"type": "candidate", "transport": 5}, "invalid_message"),
    ]:
        with pytest.raises(SignalingError) as exc:
            await c.request(message)
        assert exc.value.code == code, message
    assert (await c.request({"type": "ping"}))["type"] == "pong"
    assert client.server.app[SFU].get(room.slug).participants   # still joined


async def test_host_publish_errors(client, peers, room_factory, token_factory):
    room = await room_factory()
    c = await peers.client(client, room, join=False)
    await c.join(await token_factory(room, "host"))
    for sdp in (None, "", "hello", "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"):
        with pytest.raises(SignalingError) as exc:
            await c.request({"type": "publish", "sdp": sdp})
        assert exc.value.code == "invalid_sdp" and exc.value.status == 400
    live = client.server.app[SFU].get(room.slug)
    assert live.publications == {} and not next(iter(live.participants.values())).transports


async def test_refused_join_says_why_and_closes(client, peers, room_factory, token_factory):
    room = await room_factory(policy="signed-in")
    c = await peers.client(client, room, join=False)
    with pytest.raises(SignalingError) as exc:
        await c.join()
    assert exc.value.code == "sign_in_required" and exc.value.status == 401
    await asyncio.wait_for(c.closed.wait(), 5)
    c2 = await peers.client(client, room, join=False)
    with pytest.raises(SignalingError) as exc:
        await c2.join("ods_not-a-token")
    assert exc.value.code == "invalid_token"
    await c2.close()
    other = await room_factory()
    c3 = await peers.client(client, room, join=False)
    with pytest.raises(SignalingError) as exc:
        await c3.join(await token_factory(other, "viewer"))
    assert exc.value.code == "token_wrong_room" and exc.value.status == 403
    await c3.close()
    c4 = await peers.client(client, room, join=False)
    joined = await c4.join(await token_factory(room, "viewer"))  # an explicit viewer grant enters
    assert joined["participant"]["role"] == "viewer"
    await c4.close()
    assert client.server.app[SFU].get(room.slug) is None


async def test_room_events_mute_and_leave(client, peers, room_factory):
    room = await room_factory()
    viewer = await peers.client(client, room, name="Viewer")
    publisher = await peers.host(client, room, name="Host")
    host = publisher.client
    joined = await viewer.next_event("participant_joined")
    assert joined["participant"]["name"] == "Host" and joined["participant"]["role"] == "host"
    reply = await publisher.publish(fps=10)
    published = [await viewer.next_event("track_published") for _ in range(2)]
    assert {e["publication"]["id"] for e in published} == {p["id"] for p in reply["publications"]}
    video = next(p["id"] for p in reply["publications"] if p["kind"] == "video")

    await host.request({"type": "mute", "publication": video})
    event = await viewer.next_event("track_muted")
    assert event == {"type": "track_muted", "publication": video, "by": "self"}
    await host.request({"type": "unmute", "publication": video})
    assert (await viewer.next_event("track_unmuted"))["publication"] == video

    await host.request({"type": "unpublish", "transport": reply["transport"]})
    gone = {(await viewer.next_event("track_unpublished"))["publication"] for _ in range(2)}
    assert gone == {p["id"] for p in reply["publications"]}
    await host.request({"type": "leave"})
    left = await viewer.next_event("participant_left")
    assert left["participant"] == joined["participant"]["id"]
    await asyncio.wait_for(host.closed.wait(), 5)


async def test_moderation_on_the_control_channel(client, peers, room_factory):
    room = await room_factory()
    bus = client.server.app[BUS]
    publisher = await peers.host(client, room)
    host = publisher.client
    watcher = await peers.viewer(client, room)
    viewer = watcher.client
    reply = await publisher.publish(fps=15, audio=False)
    video = reply["publications"][0]["id"]
    await watcher.subscribe()
    live = client.server.app[SFU].get(room.slug)
    publication = live.publications[video]
    subject = next(p.subject for p in live.participants.values() if p.role == "host")
    deadline = time.monotonic() + 20
    while not (watcher.video() and watcher.video().frames >= 5) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert watcher.video().frames >= 5

    await bus.publish(f"room:{room.slug}:control",
                      {"action": "mute", "target": subject, "source": "camera", "by": "a:99"})
    assert (await viewer.next_event("track_muted"))["by"] == "moderator"
    assert not publication.forwarding
    frames = watcher.video().frames
    # Absence is seen over a span: while the SFU receives the publisher's next 8 frames
    # (half a second of them), the viewer gets at most the one or two already in flight.
    until, deadline = publication.frames + 8, time.monotonic() + 10
    while publication.frames < until:
        assert time.monotonic() < deadline, "the publisher's frames stopped reaching the SFU"
        await asyncio.sleep(0.05)
    assert watcher.video().frames <= frames + 2
    with pytest.raises(SignalingError) as exc:
        await host.request({"type": "unmute", "publication": video})
    assert exc.value.code == "muted_by_moderator"

    await bus.publish(f"room:{room.slug}:control",
                      {"action": "unmute", "target": subject, "source": "camera", "by": "a:99"})
    assert (await viewer.next_event("track_unmuted"))["by"] == "moderator"
    deadline = time.monotonic() + 10
    while watcher.video().frames < frames + 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert watcher.video().frames >= frames + 5          # resumed at a keyframe

    await bus.publish(f"room:{room.slug}:control",
                      {"action": "kick", "target": subject, "by": "a:99", "reason": "spam"})
    kicked = await host.next_event("kicked")
    assert kicked["reason"] == "spam"
    await asyncio.wait_for(host.closed.wait(), 5)
    assert (await viewer.next_event("track_unpublished"))["publication"] == video
    assert (await viewer.next_event("participant_left"))["reason"] == "kicked"
    assert all(p.subject != subject for p in live.participants.values())


async def test_room_info_and_participants_api(client, peers, room_factory):
    room = await room_factory(title="Info room")
    resp = await client.get(f"/api/rooms/{room.slug}")
    body = await resp.json()
    assert resp.status == 200
    assert body["title"] == "Info room" and body["live"] is False and body["publications"] == 0
    assert body["ice_servers"] == []
    assert await refusal(client.get("/api/rooms/no-such-room-here")) == (404, "room_not_found")
    publisher = await peers.host(client, room, name="Hosty")
    await publisher.publish(fps=10)
    body = await (await client.get(f"/api/rooms/{room.slug}")).json()
    assert body["live"] is True and body["publications"] == 2
    listing = await (await client.get(f"/api/rooms/{room.slug}/participants")).json()
    assert [p["name"] for p in listing["participants"]] == ["Hosty"]
    assert {p["kind"] for p in listing["publications"]} == {"audio", "video"}
    private = await room_factory(policy="signed-in")
    resp = await client.get(f"/api/rooms/{private.slug}/participants")
    assert resp.status == 401 and (await resp.json())["error"] == "sign_in_required"


async def test_ice_servers_from_configuration(aiohttp_client, service_urls, tmp_path, room_factory):
    from conftest import make_config
    from odsmedia.app import make_app

    config = make_config(service_urls, tmp_path / "d", ODS_ICE_STUN_URLS="stun:stun.example.org:3478",
                         ODS_ICE_TURN_URLS="turn:turn.example.org:3478", ODS_ICE_TURN_USERNAME="u",
                         ODS_ICE_TURN_CREDENTIAL="p")
    c = await aiohttp_client(make_app(config))
    room = await room_factory()
    body = await (await c.get(f"/api/rooms/{room.slug}")).json()
    assert body["ice_servers"] == [{"urls": ["stun:stun.example.org:3478"]},
                                   {"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "p"}]
    resp = await c.options(f"/rooms/{room.slug}/whip")
    assert resp.status == 204
