"""media.max_webrtc_viewers_per_room: past the cap a viewer gets a typed refusal."""

from __future__ import annotations

import pytest

from testsupport.peers import SignalingError


async def test_viewer_past_the_cap_is_refused_and_publishers_are_not_counted(
        aiohttp_client, service_urls, tmp_path, peers, room_factory):
    from conftest import make_config
    from odsmedia.app import make_app

    config = make_config(service_urls, tmp_path / "data", ODS_MEDIA_MAX_WEBRTC_VIEWERS_PER_ROOM="1",
                         ODS_RECORDING_ENABLED="false")
    client = await aiohttp_client(make_app(config))
    room = await room_factory()
    publisher = await peers.host(client, room)
    await publisher.publish(fps=15)
    first = await peers.viewer(client, room, name="first", decode=False)
    await first.subscribe()
    second = await peers.viewer(client, room, name="second", decode=False)
    with pytest.raises(SignalingError) as refused:
        await second.subscribe()
    assert refused.value.code == "webrtc_viewer_cap"
