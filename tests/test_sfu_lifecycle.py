"""Lifecycle: everything a participant made is released when it goes."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time

import psutil
import pytest

from odsmedia.rooms.sfu import SFU
from odsmedia.rooms.subscription import Subscription
from odsmedia.rooms.transport import SubscriberTransport
from testsupport.peers import SignalingClient, Viewer

pytestmark = pytest.mark.timeout(240)
log = logging.getLogger("test")


# An event loop's default executor (encoding, DNS) starts its worker threads on demand,
# up to its max_workers, and keeps them (those of earlier tests' loops linger too): how
# many exist depends on how busy the machine was, not on a leak.  Every other thread
# must come back to the baseline exactly.
POOL_PREFIX = "asyncio_"


def counts() -> dict[str, int]:
    gc.collect()
    return {
        "tasks": len(asyncio.all_tasks()),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": sum(1 for t in threading.enumerate() if not t.name.startswith(POOL_PREFIX)),
        "rss": psutil.Process().memory_info().rss,
    }


async def settle(baseline: dict[str, int], slack: dict[str, int], timeout: float = 15) -> dict[str, int]:
    """Poll until the resource counts are back within slack of the baseline."""
    deadline = time.monotonic() + timeout
    while True:
        now = counts()
        if all(now[k] <= baseline[k] + slack[k] for k in slack) or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.2)


async def test_fifty_join_leave_cycles_leak_nothing(client, peers, room_factory):
    room = await room_factory()
    base = str(client.make_url(""))
    sfu = client.server.app[SFU]
    publisher = await peers.host(client, room)
    await publisher.publish(fps=10, audio=True)
    live = sfu.get(room.slug)

    async def cycle() -> None:
        # Made and closed here, not by the peers fixture: what each cycle leaves behind is the point.
        c = SignalingClient(base, room.slug)
        await c.connect()
        await c.join()
        viewer = Viewer(c, decode=False)
        offer = await viewer.subscribe()
        me = next(p for p in live.participants.values() if offer["transport"] in p.transports)
        await asyncio.wait_for(me.transports[offer["transport"]].connected.wait(), 10)
        await c.request({"type": "leave"})
        await asyncio.wait_for(c.closed.wait(), 5)
        await viewer.close()
        await c.close()

    for _ in range(5):                   # warm up: caches, codec tables, pools
        await cycle()
    baseline = await settle(counts(), {"tasks": 0}, timeout=2)
    for _ in range(50):
        await cycle()
    slack = {"tasks": 3, "fds": 4, "threads": 0, "rss": 40 * 1024 * 1024}
    after = await settle(baseline, slack)
    log.warning("50 cycles: baseline %s, after %s; threads %s", baseline, after,
                sorted(t.name for t in threading.enumerate()))
    assert len(live.participants) == 1
    for key, allowed in slack.items():
        assert after[key] <= baseline[key] + allowed, (key, baseline[key], after[key])


async def test_publisher_vanishing_ends_subscriptions_and_transports(client, peers, room_factory):
    room = await room_factory()
    sfu = client.server.app[SFU]
    publisher = await peers.host(client, room)
    host = publisher.client
    reply = await publisher.publish(fps=10)
    watcher = await peers.viewer(client, room)
    await watcher.subscribe()
    live = sfu.get(room.slug)
    viewer_participant = next(p for p in live.participants.values() if p.role == "viewer")
    transport = next(iter(viewer_participant.transports.values()))
    assert isinstance(transport, SubscriberTransport)
    await asyncio.wait_for(transport.connected.wait(), 10)
    # The publisher's process dies: its socket drops without a leave.
    host.ws._writer.transport.abort()
    gone = {(await watcher.client.next_event("track_unpublished"))["publication"] for _ in range(2)}
    assert gone == {p["id"] for p in reply["publications"]}
    assert (await watcher.client.next_event("participant_left"))["participant"]
    deadline = time.monotonic() + 5
    while viewer_participant.transports and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not viewer_participant.transports and transport.closed
    assert transport.pc.connectionState == "closed"
    assert live.publications == {}


async def test_subscriber_that_never_answers_is_released(client, peers, room_factory):
    room = await room_factory()
    sfu = client.server.app[SFU]
    sfu.connect_timeout = 1.0
    publisher = await peers.host(client, room)
    await publisher.publish(fps=10, audio=False)
    silent = await peers.client(client, room)
    offer = await silent.request({"type": "subscribe"})
    live = sfu.get(room.slug)
    participant = next(p for p in live.participants.values() if offer["transport"] in p.transports)
    deadline = time.monotonic() + 5
    while participant.transports and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not participant.transports
    publication = next(iter(live.publications.values()))
    assert not [s for s in publication.sinks if isinstance(s, Subscription)]


async def test_shutdown_closes_every_peer_and_socket(client, peers, room_factory):
    room = await room_factory()
    sfu = client.server.app[SFU]
    publisher = await peers.host(client, room)
    host = publisher.client
    await publisher.publish(fps=10)
    watcher = await peers.viewer(client, room, decode=False)
    await watcher.subscribe()
    live = sfu.get(room.slug)
    transports = [t for p in live.participants.values() for t in p.transports.values()]
    assert len(transports) == 2
    await asyncio.wait_for(asyncio.gather(*(t.connected.wait() for t in transports)), 10)

    await client.server.close()          # the application's shutdown sequence

    assert all(t.closed and t.pc.connectionState == "closed" for t in transports)
    assert sfu.rooms == {}
    for c in (host, watcher.client):
        await asyncio.wait_for(c.closed.wait(), 5)
    assert (await watcher.client.next_event("error"))["code"] == "server_shutdown"
