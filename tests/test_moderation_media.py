"""A moderator's mute, issued on the chat socket of one node, stops the frames an
aiortc viewer receives from the SFU on another node."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import make_config
from odsmedia.app import make_app
from odsmedia.rooms.sfu import SFU
from testsupport.peers import SignalingError, Viewer
from test_chat_support import ChatSocket

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]


async def frames_reach(watcher: Viewer, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not (watcher.video() and watcher.video().frames >= count):
        assert time.monotonic() < deadline, "frames did not arrive"
        await asyncio.sleep(0.05)


async def test_moderator_mute_from_another_node_stops_frames_at_an_aiortc_viewer(
        aiohttp_client, peers, service_urls, tmp_path, room_factory, token_factory, db):
    sfu_node = await aiohttp_client(make_app(make_config(service_urls, tmp_path / "sfu")))
    chat_node = await aiohttp_client(make_app(make_config(service_urls, tmp_path / "chat")))
    room = await room_factory()
    publisher = await peers.host(sfu_node, room)
    host = publisher.client
    watcher = await peers.viewer(sfu_node, room)
    viewer = watcher.client
    mod = await ChatSocket.open(chat_node, f"/rooms/{room.slug}/chat", token=await token_factory(room, "moderator"))
    try:
        reply = await publisher.publish(fps=15, audio=False)
        video = reply["publications"][0]["id"]
        await watcher.subscribe()
        await frames_reach(watcher, 5)
        live = sfu_node.server.app[SFU].get(room.slug)
        target = next(p.subject for p in live.participants.values() if p.role == "host")

        sent = time.monotonic()
        ack = await mod.request({"type": "mute", "target": target, "source": "camera"})
        assert ack["type"] == "ack", ack
        event = await viewer.next_event("track_muted")
        effect_ms = (time.monotonic() - sent) * 1000
        assert event == {"type": "track_muted", "publication": video, "by": "moderator"}
        assert not live.publications[video].forwarding
        frames = watcher.video().frames
        # Frames stop: while the SFU receives the publisher's next 9 frames (0.6 s of them),
        # the viewer gets at most the one or two already in flight.
        publication = live.publications[video]
        until, deadline = publication.frames + 9, time.monotonic() + 10
        while publication.frames < until:
            assert time.monotonic() < deadline, "the publisher's frames stopped reaching the SFU"
            await asyncio.sleep(0.05)
        assert watcher.video().frames <= frames + 2
        with pytest.raises(SignalingError) as exc:
            await host.request({"type": "unmute", "publication": video})
        assert exc.value.code == "muted_by_moderator"

        assert (await mod.request({"type": "unmute", "target": target, "source": "camera"}))["type"] == "ack"
        assert (await viewer.next_event("track_unmuted"))["by"] == "moderator"
        await frames_reach(watcher, frames + 5)
        actions = await db.fetch("SELECT action, target FROM moderation_actions WHERE room_id = $1 ORDER BY id",
                                 room.id)
        assert [(r["action"], r["target"]) for r in actions] == [("mute", target), ("unmute", target)]
        print(f"moderator mute -> track_muted at the viewer: {effect_ms:.1f} ms")
    finally:
        await mod.close()
