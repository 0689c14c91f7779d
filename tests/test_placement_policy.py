"""The placement policy (rooms.placement_policy), decided without sockets; and the registry
facts it reads, through the real Redis."""

from __future__ import annotations

import pytest

from conftest import unique_slug
from odsmedia.bus import Bus
from odsmedia.rooms.placement import Placement, RoomOnOtherNode, forget
from odsmedia.rooms.placement_policy import Limits, NodeLoad, Placed, Where, least_loaded, place

LIMITS = Limits(relay_threshold=100, relay_cpu_percent=70, full_cpu_percent=90)
A = NodeLoad("a", "http://a", rooms=1, viewers=10, cpu=20)
B = NodeLoad("b", "http://b", rooms=0, viewers=0, cpu=5)
C = NodeLoad("c", "http://c", rooms=3, viewers=50, cpu=40)
FULL = NodeLoad("f", "http://f", rooms=9, viewers=900, cpu=95)
HOT = NodeLoad("a", "http://a", rooms=1, viewers=10, cpu=75)      # A past the relay CPU limit
NODES = (A, B, C, FULL)


def test_a_room_live_nowhere_is_hosted_here_unless_this_node_is_full():
    assert place("host", A, None, 0, NODES, LIMITS, relays=True) == Placed(Where.ORIGIN)
    assert place("viewer", A, None, 0, NODES, LIMITS, relays=False) == Placed(Where.ORIGIN)
    # Full: the least-loaded live node that is not full (B: lowest CPU).
    assert place("host", FULL, None, 0, NODES, LIMITS, relays=False) == Placed(Where.REDIRECT, B)
    # Full and alone (or every other node full too): host it anyway rather than refuse.
    assert place("host", FULL, None, 0, (FULL,), LIMITS, relays=False) == Placed(Where.ORIGIN)


def test_publishers_go_to_the_origin():
    assert place("host", B, A, 0, NODES, LIMITS, relays=True) == Placed(Where.REDIRECT, A)
    # Even when the origin is busy: media is published where the room lives.
    assert place("host", B, HOT, 500, NODES, LIMITS, relays=True) == Placed(Where.REDIRECT, HOT)
    assert place("host", A, A, 500, NODES, LIMITS, relays=True) == Placed(Where.ORIGIN)


def test_viewers_go_to_an_origin_that_is_not_busy():
    assert place("viewer", B, A, 99, NODES, LIMITS, relays=True) == Placed(Where.REDIRECT, A)
    assert place("moderator", B, A, 99, NODES, LIMITS, relays=True) == Placed(Where.REDIRECT, A)
    assert place("viewer", A, A, 99, NODES, LIMITS, relays=True) == Placed(Where.ORIGIN)


def test_viewers_past_the_threshold_or_the_cpu_limit_are_relayed():
    # Here is another node, not full: served here through a relay.
    assert place("viewer", B, A, 100, NODES, LIMITS, relays=True) == Placed(Where.RELAY, A)
    assert place("viewer", B, HOT, 0, NODES, LIMITS, relays=True) == Placed(Where.RELAY, HOT)
    # Here is the busy origin: sent to the least-loaded other node, which relays.
    assert place("viewer", A, A, 100, NODES, LIMITS, relays=True) == Placed(Where.REDIRECT, B)
    # Here is full: to the least-loaded node that is neither full nor the origin.
    assert place("viewer", FULL, A, 100, NODES, LIMITS, relays=True) == Placed(Where.REDIRECT, B)
    assert place("viewer", FULL, A, 100, (A, FULL), LIMITS, relays=True) == Placed(Where.REDIRECT, A)


def test_without_relays_viewers_stay_with_the_origin():
    assert place("viewer", B, A, 1000, NODES, LIMITS, relays=False) == Placed(Where.REDIRECT, A)
    assert place("viewer", A, A, 1000, NODES, LIMITS, relays=False) == Placed(Where.ORIGIN)
    assert place("viewer", FULL, HOT, 1000, NODES, LIMITS, relays=False) == Placed(Where.REDIRECT, HOT)


def test_a_zero_threshold_relays_every_viewer_of_another_node():
    limits = Limits(relay_threshold=0, relay_cpu_percent=70, full_cpu_percent=90)
    assert place("viewer", B, A, 0, NODES, limits, relays=True) == Placed(Where.RELAY, A)
    assert place("host", B, A, 0, NODES, limits, relays=True) == Placed(Where.REDIRECT, A)
    # It pushes nobody off the origin: only its CPU does.
    assert place("viewer", A, A, 0, NODES, limits, relays=True) == Placed(Where.ORIGIN)
    assert place("viewer", A, A, 0, (HOT, B), limits, relays=True) == Placed(Where.ORIGIN)
    assert place("viewer", HOT, HOT, 0, (HOT, B), limits, relays=True) == Placed(Where.REDIRECT, B)


def test_least_loaded_prefers_cpu_then_viewers_and_skips_full_nodes():
    twin = NodeLoad("b2", "http://b2", viewers=0, cpu=5)
    assert least_loaded((C, FULL, twin, B), LIMITS) == B          # same CPU and viewers: by id
    assert least_loaded((C, FULL), LIMITS, besides=("c",)) is None
    assert least_loaded((), LIMITS) is None


@pytest.fixture
async def buses(service_urls):
    import uuid

    prefix = f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:"      # this test's registry alone
    made = [Bus(service_urls.redis_url, prefix) for _ in range(3)]
    yield made
    for bus in made:
        await bus.close()


async def test_nodes_publish_their_load_and_the_live_ones_are_listed(buses):
    a, b, _ = buses
    node_a = Placement(a, "http://node-a:1", ttl=5, worker=0)
    node_b = Placement(b, "http://node-b:2", ttl=5, worker=1)
    node_a.load = lambda: (2, 7)
    await node_a.register()
    await node_b.register()
    listed = {n.node_id: n for n in await node_a.live_nodes()}
    assert set(listed) == {a.node_id, b.node_id}
    assert (listed[a.node_id].url, listed[a.node_id].rooms, listed[a.node_id].viewers) == ("http://node-a:1", 2, 7)
    assert (listed[b.node_id].url, listed[b.node_id].rooms, listed[b.node_id].viewers) == ("http://node-b:2", 0, 0)
    assert (await a.redis.hget(node_a._node_key(a.node_id), "worker")) == b"0"
    await node_b.unregister()
    assert [n.node_id for n in await node_a.live_nodes()] == [a.node_id]


async def test_the_claim_of_a_node_that_is_gone_is_taken_over_at_once(buses):
    """The supervisor forgets a worker it saw die: the next node asked for its room takes it
    without waiting out the claim's TTL; a live holder keeps its room."""
    a, b, c = buses
    dead, alive, other = (Placement(bus, f"http://{i}", ttl=15) for i, bus in enumerate(buses))
    slug = unique_slug()
    await dead.claim(slug)
    with pytest.raises(RoomOnOtherNode) as info:
        await alive.claim(slug)
    assert info.value.node_id == a.node_id and info.value.url == "http://0"
    assert (await alive.place(slug, "viewer")) == Placed(Where.REDIRECT, NodeLoad(a.node_id, "http://0"))
    await forget(c, a.node_id)
    assert (await alive.place(slug, "viewer")) == Placed(Where.ORIGIN)
    await alive.claim(slug)
    assert slug in alive.claimed
    assert (await b.redis.get(alive._room_key(slug))) == b.node_id.encode()
    with pytest.raises(RoomOnOtherNode) as info:
        await other.claim(slug)
    assert info.value.node_id == b.node_id
