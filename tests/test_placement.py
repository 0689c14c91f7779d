"""Room placement across nodes through the real Redis."""

import pytest

from conftest import unique_slug
from odsmedia.bus import Bus
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
