"""Abuse limits per client network and per room (issue 11, item 11): caps on open
signaling participants, chat sockets and WHEP sessions; chat post rates on top of
the per-identity one.  Every test client is on 127.0.0.0/24, one network."""

from __future__ import annotations

import re
import uuid

import aiohttp
import pytest
from aiortc import RTCSessionDescription

from conftest import make_config
from odsmedia.app import make_app
from testsupport.peers import SignalingClient, SignalingError, peer
from test_chat_support import ChatSocket
from test_whip_whep import SDP, whip_offer

pytestmark = pytest.mark.timeout(90)


async def make_client(aiohttp_client, service_urls, tmp_path, **env):
    env.setdefault("ODS_REDIS_PREFIX", f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:")
    return await aiohttp_client(make_app(make_config(service_urls, tmp_path / uuid.uuid4().hex[:6], **env)))


async def refusals(client, limit: str) -> float:
    text = await (await client.get("/metrics")).text()
    match = re.search(r'ods_abuse_refusals_total\{limit="%s"\} ([0-9.e+]+)' % limit, text)
    return float(match.group(1)) if match else 0.0


async def test_chat_sockets_per_network_are_capped_with_a_typed_refusal(aiohttp_client, service_urls, tmp_path,
                                                                        room_factory):
    client = await make_client(aiohttp_client, service_urls, tmp_path, ODS_ABUSE_CHAT_SOCKETS_PER_NETWORK="3")
    room = await room_factory()
    url = f"/rooms/{room.slug}/chat"
    before = await refusals(client, "chat_sockets")
    # Anonymous guests: each a fresh cookie jar, so a fresh identity, all from one network.
    sessions = [aiohttp.ClientSession() for _ in range(4)]
    try:
        socks = [await ChatSocket.open(s, str(client.make_url(url))) for s in sessions[:3]]
        ws = await sessions[3].ws_connect(str(client.make_url(url)))
        await ws.send_json({"type": "join"})
        refusal = await ws.receive_json(timeout=5)
        assert refusal["error"] == "rate_limited" and refusal["limit"] == "chat_sockets"
        assert refusal["retry_after"] > 0
        closing = await ws.receive(timeout=5)
        assert (closing.type.name, closing.data) == ("CLOSE", 4429)
        assert await refusals(client, "chat_sockets") == before + 1
        # A socket that ends gives its place back.
        await socks[0].close()
        again = await ChatSocket.open(sessions[3], str(client.make_url(url)))
        assert again.welcome["type"] == "welcome"
        for sock in [*socks[1:], again]:
            await sock.close()
    finally:
        for s in sessions:
            await s.close()


async def test_signaling_participants_per_network_are_capped(aiohttp_client, service_urls, tmp_path, room_factory):
    client = await make_client(aiohttp_client, service_urls, tmp_path, ODS_ABUSE_SIGNALING_PER_NETWORK="2")
    room = await room_factory()
    base = str(client.make_url(""))
    joined = []
    try:
        for _ in range(2):
            c = SignalingClient(base, room.slug)
            await c.connect()
            await c.join()
            joined.append(c)
        third = SignalingClient(base, room.slug)
        await third.connect()
        with pytest.raises(SignalingError) as exc:
            await third.join()
        assert exc.value.code == "rate_limited"
        await third.close()
        await joined.pop().close()
        fourth = SignalingClient(base, room.slug)
        await fourth.connect()
        # The leaving socket's lease is released as its handler ends: poll until it is.
        for _ in range(50):
            try:
                await fourth.join()
                break
            except SignalingError as err:
                assert err.code == "rate_limited"
                import asyncio
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("the cap was never released")
        joined.append(fourth)
    finally:
        for c in joined:
            await c.close()


async def test_whep_sessions_per_network_are_capped(aiohttp_client, service_urls, tmp_path, room_factory,
                                                    token_factory):
    client = await make_client(aiohttp_client, service_urls, tmp_path, ODS_ABUSE_WHEP_PER_NETWORK="1")
    room = await room_factory()
    host = {"Authorization": f"Bearer {await token_factory(room, 'host')}"}
    publisher, offer = await whip_offer()
    viewers = [peer(), peer()]
    try:
        resp = await client.post(f"/rooms/{room.slug}/whip", data=offer, headers={**host, **SDP})
        assert resp.status == 201, await resp.text()
        await publisher.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))
        for v in viewers:
            v.addTransceiver("video", direction="recvonly")
            await v.setLocalDescription(await v.createOffer())
        resp = await client.post(f"/rooms/{room.slug}/whep", data=viewers[0].localDescription.sdp, headers=SDP)
        assert resp.status == 201, await resp.text()
        location = resp.headers["Location"]
        resp = await client.post(f"/rooms/{room.slug}/whep", data=viewers[1].localDescription.sdp, headers=SDP)
        body = await resp.json()
        assert resp.status == 429 and body["error"] == "rate_limited" and body["limit"] == "whep_sessions"
        assert int(resp.headers["Retry-After"]) > 0
        assert (await client.delete(location)).status == 200
        resp = await client.post(f"/rooms/{room.slug}/whep", data=viewers[1].localDescription.sdp, headers=SDP)
        assert resp.status == 201, await resp.text()
    finally:
        for v in viewers:
            await v.close()
        await publisher.close()


async def test_post_rates_per_network_and_per_room(aiohttp_client, service_urls, tmp_path, room_factory,
                                                   token_factory):
    client = await make_client(aiohttp_client, service_urls, tmp_path, ODS_CHAT_RATE_PER_NETWORK_10S="5",
                               ODS_CHAT_RATE_PER_ROOM_10S="0")
    room = await room_factory()
    url = str(client.make_url(f"/rooms/{room.slug}/chat"))
    viewers = [await ChatSocket.open(client.session, url, token=await token_factory(room, "viewer")) for _ in range(3)]
    host = await ChatSocket.open(client.session, url, token=await token_factory(room, "host"))
    before = await refusals(client, "chat_network_rate")
    replies = [await viewers[i % 3].post(f"flood {i}") for i in range(8)]
    assert [r["type"] for r in replies] == ["ack"] * 5 + ["error"] * 3
    assert {r["error"] for r in replies[5:]} == {"rate_limited"}
    assert {r["limit"] for r in replies[5:]} == {"chat_network_rate"} and all(r["retry_after"] > 0 for r in replies[5:])
    assert await refusals(client, "chat_network_rate") == before + 3
    assert (await host.post("hosts are not counted per network"))["type"] == "ack"
    for sock in [*viewers, host]:
        await sock.close()

    client = await make_client(aiohttp_client, service_urls, tmp_path, ODS_CHAT_RATE_PER_NETWORK_10S="0",
                               ODS_CHAT_RATE_PER_ROOM_10S="4")
    room = await room_factory()
    url = str(client.make_url(f"/rooms/{room.slug}/chat"))
    viewers = [await ChatSocket.open(client.session, url, token=await token_factory(room, "viewer")) for _ in range(2)]
    replies = [await viewers[i % 2].post(f"busy {i}") for i in range(6)]
    assert [r["type"] for r in replies] == ["ack"] * 4 + ["error"] * 2
    assert {r["limit"] for r in replies[4:]} == {"chat_room_rate"}
    # A refused post is not counted against the poster's own window.
    other_room = await room_factory()
    for sock in viewers:
        await sock.close()
    assert other_room  # rates are per room: another room is unaffected
    fresh = await ChatSocket.open(client.session, str(client.make_url(f"/rooms/{other_room.slug}/chat")),
                                  token=await token_factory(other_room, "viewer"))
    assert (await fresh.post("another room"))["type"] == "ack"
    await fresh.close()
