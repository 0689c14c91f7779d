"""A WHIP-fed origin: an aiortc publisher over WHIP feeds the room, an LL-HLS client that
follows blocking reloads receives every part in order, and PyAV decodes them without a gap
in the publisher's frame counter."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc import RTCSessionDescription

from conftest import make_config
from odsmedia.app import make_app
from recorder.recorder import RECORDER
from testsupport.llhls import LlHlsClient
from testsupport.peers import whip_offer

pytestmark = pytest.mark.timeout(120)
SDP = {"Content-Type": "application/sdp"}


async def test_whip_publisher_to_llhls_client_without_gaps(aiohttp_client, service_urls, room_factory,
                                                          token_factory, tmp_path):
    config = make_config(service_urls, tmp_path / "data", ODS_RECORDING_SEGMENT_SECONDS="1",
                         ODS_RECORDING_PART_SECONDS="0.5", ODS_RECORDING_RECONNECT_GRACE="0")
    client = await aiohttp_client(make_app(config))
    recorder = client.app[RECORDER]
    room = await room_factory()
    host = {"Authorization": f"Bearer {await token_factory(room, 'host')}"}
    publisher, offer = await whip_offer(fps=15)
    try:
        resp = await client.post(f"/rooms/{room.slug}/whip", data=offer, headers={**host, **SDP})
        assert resp.status == 201, await resp.text()
        location = resp.headers["Location"]
        await publisher.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))
        deadline = time.monotonic() + 60
        while (recording := recorder.recordings.get(room.slug)) is None or recording.episode_id is None:
            assert time.monotonic() < deadline, "the WHIP publication started no recording"
            await asyncio.sleep(0.05)
        # The viewer page's way in: the listing names the live playlist.
        listing = await (await client.get(f"/rooms/{room.slug}/episodes")).json()
        playlist = listing["episodes"][0]["live_playlist"]
        assert playlist == f"/episodes/{recording.episode_id}/live.m3u8"

        hls = LlHlsClient(client.session, str(client.make_url(playlist)))
        await hls.follow(enough=12, deadline=deadline)
        assert (await client.delete(location, headers=host)).status == 200
        await asyncio.wait_for(recording.done.wait(), 30)
    finally:
        await publisher.close()

    # Every part of every segment from the first, in order: (1,0), (1,1), ..., (2,0), ...
    positions = [(p.msn, p.index) for p in hls.parts]
    expected = []
    for msn in sorted({m for m, _ in positions}):
        expected += [(msn, i) for i in range(max(i for m, i in positions if m == msn) + 1)]
    assert positions == expected and positions[0] == (1, 0)
    assert hls.reloads >= len(positions) // 2          # it followed blocking reloads, part by part
    counters = []
    for msn, decoded in hls.segments():
        assert decoded.video, msn
        counters += [c for _, c in decoded.video]
    # The frame counter runs on without a gap across every part received.
    assert len(counters) >= 60
    assert counters == list(range(counters[0], counters[0] + len(counters)))
