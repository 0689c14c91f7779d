"""Room placement across nodes through the real Redis."""

import asyncio

import pytest

from conftest import unique_slug
from odsmedia.bus import Bus
from odsmedia.rooms.sfu import SFU
from odsmedia.rooms.placement import Placement, RoomOnOtherNode


@pytest.fixture
async def buses(service_urls):
    a = Bus(service_urls.redis_url, service_urls.prefix)
    b = Bus(service_urls.redis_url, service_urls.prefix)
    yield a, b
    await a.close()
    await b.close()


async def test_second_node_learns_the_owner(buses):
    a, b = buses
    node_a = Placement(a, "http://node-a.example:8080", ttl=5)
    node_b = Placement(b, "http://node-b.example:8080", ttl=5)
    await node_a.register()
    await node_b.register()
    slug = unique_slug()
    await node_a.claim(slug)
    await node_a.claim(slug)  # idempotent for the owner
    with pytest.raises(RoomOnOtherNode) as info:
        await node_b.claim(slug)
    assert info.value.url == "http://node-a.example:8080"
    assert info.value.node_id == a.node_id
    # B cannot release A's claim; A can, and then B may claim.
    await node_b.release(slug)
    with pytest.raises(RoomOnOtherNode):
        await node_b.claim(slug)
    await node_a.release(slug)
    await node_b.claim(slug)
    assert await node_a.refresh() == []
    assert await node_b.refresh() == []


async def test_refresh_reports_a_lost_claim(buses):
    a, b = buses
    node_a = Placement(a, "http://a", ttl=5)
    slug = unique_slug()
    await node_a.claim(slug)
    # Simulate expiry (or a Redis restart) followed by another node taking the room.
    await a.redis.delete(node_a._room_key(slug))
    await b.redis.set(node_a._room_key(slug), b.node_id)
    assert await node_a.refresh() == [slug]


async def test_join_on_a_second_node_names_the_first(aiohttp_server, aiohttp_client, service_urls, tmp_path,
                                                     room_factory, token_factory):
    """Two app nodes on one Redis, each with its own data dir (node id), listening port and public
    URL: the room goes live on A; joining it through B is refused with A's URL, the one A serves on."""
    from aiohttp.test_utils import unused_port

    from conftest import make_config
    from odsmedia.app import make_app

    nodes, urls = [], []
    for name in ("a", "b"):
        port = unused_port()
        urls.append(f"http://127.0.0.1:{port}")
        config = make_config(service_urls, tmp_path / name, ODS_PUBLIC_URL=urls[-1], ODS_HTTP_PORT=str(port))
        nodes.append(await aiohttp_client(await aiohttp_server(make_app(config), port=port)))
    node_a, node_b = nodes
    room = await room_factory()
    ws_a = await node_a.ws_connect(f"/rooms/{room.slug}/ws")
    await ws_a.send_json({"type": "join", "name": "Alice"})
    joined = await ws_a.receive_json(timeout=10)
    assert joined["type"] == "joined", joined
    ws_b = await node_b.ws_connect(f"/rooms/{room.slug}/ws")
    await ws_b.send_json({"type": "join", "name": "Bob"})
    refused = await ws_b.receive_json(timeout=10)
    assert refused["type"] == "error" and refused["code"] == "room_on_other_node"
    assert refused["node_url"] == urls[0] != urls[1]
    assert (await node_b.session.get(f"{refused['node_url']}/healthz")).status == 200   # reachable: A answers
    await ws_b.close()
    # When the room empties on A, its claim goes and B may host it.
    await ws_a.close()
    placement_a = node_a.server.app[SFU].placement
    deadline = asyncio.get_running_loop().time() + 10
    while room.slug in placement_a.claimed and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)  # leaving is processed by A's socket task; no event to await here
    assert room.slug not in placement_a.claimed
    ws_b = await node_b.ws_connect(f"/rooms/{room.slug}/ws")
    await ws_b.send_json({"type": "join", "name": "Bob"})
    assert (await ws_b.receive_json(timeout=10))["type"] == "joined"
    await ws_b.close()


async def test_a_restarted_node_takes_back_the_claim_its_previous_run_left(service_urls, tmp_path):
    """The previous process died holding a claim (its Redis went first, or it was killed): the next
    run on the same data dir has the same node id and hosts the room instead of naming itself."""
    import subprocess
    import sys

    from odsmedia import node

    data = tmp_path / "data"
    previous = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from odsmedia import node; "
                               "print(node.identity(Path(sys.argv[1])))", str(data)],
                              capture_output=True, text=True, check=True).stdout.strip()
    slug = unique_slug()
    leftover = Bus(service_urls.redis_url, service_urls.prefix, node_id=previous)
    restarted = Bus(service_urls.redis_url, service_urls.prefix, node_id=node.identity(data))
    other = Bus(service_urls.redis_url, service_urls.prefix, node_id=node.identity(data))
    try:
        assert restarted.node_id == previous
        assert other.node_id != previous      # the id's holder (this process) still runs: another node
        await Placement(leftover, "http://127.0.0.1:1", ttl=15).claim(slug)
        await Placement(restarted, "http://127.0.0.1:1", ttl=15).claim(slug)
        with pytest.raises(RoomOnOtherNode):
            await Placement(other, "http://127.0.0.1:2", ttl=15).claim(slug)
    finally:
        for bus in (leftover, restarted, other):
            await bus.close()
