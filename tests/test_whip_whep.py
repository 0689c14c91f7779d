"""WHIP publish and WHEP playback with plain HTTP clients and aiortc peers."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc import MediaStreamTrack, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from conftest import refusal
from odsmedia.rooms.sfu import SFU
from testsupport.peers import peer, read_counter, whip_offer

pytestmark = pytest.mark.timeout(90)
SDP = {"Content-Type": "application/sdp"}


async def test_whip_refusals_and_cors(client, room_factory, token_factory):
    room = await room_factory()
    url = f"/rooms/{room.slug}/whip"
    resp = await client.options(url)
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "Location" in resp.headers["Access-Control-Expose-Headers"]
    assert resp.headers["Accept-Post"] == "application/sdp"

    pc, offer = await whip_offer()
    try:
        resp = await client.post(url, data=offer, headers=SDP)
        assert resp.status == 401 and (await resp.json())["error"] == "token_required"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        resp = await client.post(url, data=offer, headers={**SDP, "Authorization": "Bearer ods_nope"})
        assert resp.status == 401 and (await resp.json())["error"] == "invalid_token"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        viewer = await token_factory(room, "viewer")
        resp = await client.post(url, data=offer, headers={**SDP, "Authorization": f"Bearer {viewer}"})
        assert resp.status == 403 and (await resp.json())["error"] == "not_a_publisher"
        host = {"Authorization": f"Bearer {await token_factory(room, 'host')}"}
        resp = await client.post(url, data=offer, headers={**host, "Content-Type": "text/plain"})
        assert (resp.status, (await resp.json())["error"]) == (415, "unsupported_media_type")
        resp = await client.post(url, data="v=0\r\nthis is not sdp", headers={**host, **SDP})
        body = await resp.json()
        assert resp.status == 400 and body["error"] == "invalid_sdp" and body["message"]
        no_video_codec = offer.replace("H264", "H265").replace("VP8", "VP9")
        resp = await client.post(url, data=no_video_codec, headers={**host, **SDP})
        assert resp.status == 400 and (await resp.json())["error"] == "unsupported_codec"
        # Nothing half-made: the room is not live after the refusals.
        assert client.server.app[SFU].get(room.slug) is None
        resp = await client.post(f"/rooms/{room.slug}/whep", data=offer, headers=SDP)
        assert resp.status == 409 and (await resp.json())["error"] == "nothing_published"
    finally:
        await pc.close()


async def test_whip_publish_then_whep_play_then_delete(client, room_factory, token_factory):
    room = await room_factory()
    host = {"Authorization": f"Bearer {await token_factory(room, 'host')}"}
    publisher, offer = await whip_offer()
    viewer = peer()
    counters: list[int] = []
    tasks = []
    try:
        resp = await client.post(f"/rooms/{room.slug}/whip", data=offer, headers={**host, **SDP})
        assert resp.status == 201, await resp.text()
        assert resp.content_type == "application/sdp"
        whip_location = resp.headers["Location"]
        assert whip_location.startswith(f"/rooms/{room.slug}/whip/")
        await publisher.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))

        viewer.addTransceiver("video", direction="recvonly")
        viewer.addTransceiver("audio", direction="recvonly")

        @viewer.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            async def consume() -> None:
                try:
                    while True:
                        frame = await track.recv()
                        if track.kind == "video":
                            counters.append(read_counter(frame))
                except MediaStreamError:
                    pass
            tasks.append(asyncio.ensure_future(consume()))

        await viewer.setLocalDescription(await viewer.createOffer())
        resp = await client.post(f"/rooms/{room.slug}/whep", data=viewer.localDescription.sdp, headers=SDP)
        assert resp.status == 201, await resp.text()
        whep_location = resp.headers["Location"]
        await viewer.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))
        deadline = time.monotonic() + 30
        while len(counters) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(counters) >= 20
        assert all(b == a + 1 for a, b in zip(counters, counters[1:]))

        # Someone else cannot end the publisher's session.
        other = {"Authorization": f"Bearer {await token_factory(room, 'host')}"}
        assert await refusal(client.delete(whip_location, headers=other)) == (403, "not_your_session")
        assert await refusal(client.patch(whep_location, data="a=candidate:x")) == (415, "unsupported_media_type")
        assert (await client.delete(whep_location)).status == 200
        assert await refusal(client.delete(whep_location)) == (404, "unknown_session")
        assert (await client.delete(whip_location, headers=host)).status == 200
        assert client.server.app[SFU].get(room.slug) is None
        resp = await client.post(f"/rooms/{room.slug}/whep", data=viewer.localDescription.sdp, headers=SDP)
        assert (resp.status, (await resp.json())["error"]) == (409, "nothing_published")
    finally:
        for task in tasks:
            task.cancel()
        await viewer.close()
        await publisher.close()


async def test_whep_trickles_candidates_with_patch_and_refuses_ice_restart(client, room_factory, token_factory):
    """RFC 9725 section 4.3: the offer goes without candidates, they follow in a PATCH
    (application/trickle-ice-sdpfrag, If-Match: the ETag); an ICE restart answers 422."""
    room = await room_factory()
    host = {"Authorization": f"Bearer {await token_factory(room, 'host')}"}
    publisher, offer = await whip_offer()
    viewer = peer()
    counters: list[int] = []
    tasks = []
    try:
        resp = await client.post(f"/rooms/{room.slug}/whip", data=offer, headers={**host, **SDP})
        assert resp.status == 201
        await publisher.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))
        viewer.addTransceiver("video", direction="recvonly")

        @viewer.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            async def consume() -> None:
                try:
                    while True:
                        counters.append(read_counter(await track.recv()))
                except MediaStreamError:
                    pass
            tasks.append(asyncio.ensure_future(consume()))

        await viewer.setLocalDescription(await viewer.createOffer())
        full = viewer.localDescription.sdp
        candidates = [line for line in full.splitlines() if line.startswith("a=candidate:")]
        ufrag = next(line for line in full.splitlines() if line.startswith("a=ice-ufrag:"))
        mid = next(line for line in full.splitlines() if line.startswith("a=mid:"))
        assert candidates
        bare = "\r\n".join(line for line in full.splitlines()
                           if not line.startswith(("a=candidate:", "a=end-of-candidates"))) + "\r\n"
        resp = await client.post(f"/rooms/{room.slug}/whep", data=bare, headers=SDP)
        assert resp.status == 201, await resp.text()
        location, etag = resp.headers["Location"], resp.headers["ETag"]
        await viewer.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))
        frag = "\r\n".join([ufrag, mid, *candidates]) + "\r\n"
        trickle = {"Content-Type": "application/trickle-ice-sdpfrag"}

        assert await refusal(client.patch(location, data=frag, headers={**trickle, "If-Match": '"stale"'})) == (412, "etag_mismatch")
        resp = await client.patch(location, data=frag.replace(ufrag, "a=ice-ufrag:n3wU"),
                                  headers={**trickle, "If-Match": "*"})
        assert resp.status == 422 and (await resp.json())["error"] == "ice_restart_not_supported"
        assert await refusal(client.patch(location, data=frag, headers=SDP)) == (415, "unsupported_media_type")
        assert await refusal(client.patch(location + "x", data=frag, headers=trickle)) == (404, "unknown_session")
        session = location.rsplit("/", 1)[1]
        [transport] = [t for p in client.server.app[SFU].get(room.slug).participants.values()
                       for t in p.transports.values() if t.id == session]
        connection = transport.pc.getTransceivers()[0].sender.transport.transport._connection

        def host_candidates() -> set[tuple[str, int]]:
            return {(c.host, c.port) for c in connection.remote_candidates if c.type == "host"}

        # The server knows no host candidate of the viewer (at most peer-reflexive ones
        # learned from its checks) until the PATCH brings them.
        assert host_candidates() == set()
        resp = await client.patch(location, data=frag, headers={**trickle, "If-Match": etag})
        assert resp.status == 204 and resp.headers["ETag"] == etag
        expected = {(line.split()[4], int(line.split()[5])) for line in candidates}
        assert host_candidates() == expected
        deadline = time.monotonic() + 30
        while len(counters) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(counters) >= 10, "no media after trickled candidates"
    finally:
        for task in tasks:
            task.cancel()
        await viewer.close()
        await publisher.close()
