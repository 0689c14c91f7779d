"""Which node hosts each live room: the node registry and room claims in Redis.

A room's media lives on one node (the LiveKit model). The first node to take
a participant claims ``room:{slug}:node`` with a TTL and keeps refreshing it
while the room is live; another node asked to host the same room learns the
owner's node URL and refuses with ``room_on_other_node`` so the client (or
a load balancer) can go there. A node that dies stops refreshing, and its
claims expire after ``ttl`` seconds.

Every node publishes its load (rooms, viewers, CPU) in ``node:{id}`` and its
id in the ``nodes`` set, scored by when it was last seen; the placement policy
(``rooms.placement_policy``) reads them. A claim whose holder is no longer
registered (its registration expired, or the worker supervisor saw it die and
``forget``-ed it) is taken over at once instead of after the claim's TTL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Callable

from ..bus import Bus
from .placement_policy import HERE, Limits, NodeLoad, Placed, place

log = logging.getLogger("odsmedia.placement")

# Compare-and-delete / compare-and-refresh: only the owner may touch its claim.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"
_REFRESH = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end"
# Take over the claim of a node that is gone: only if it still names that node.
_TAKE_OVER = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
              "return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) else return nil end")


class CpuMeter:
    """This process's CPU time per wall second since the last sample, in percent of one core."""

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._wall = time.monotonic()
        self.percent = 0.0

    def sample(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        if wall - self._wall > 0.05:
            self.percent = 100.0 * (cpu - self._cpu) / (wall - self._wall)
            self._cpu, self._wall = cpu, wall
        return self.percent


class RoomOnOtherNode(Exception):
    def __init__(self, node_id: str, url: str, viewers: int = 0) -> None:
        super().__init__(f"room is hosted by node {node_id}")
        self.node_id = node_id
        self.url = url
        self.viewers = viewers          # the origin's viewer count for the room, as it last published it


def nodes_key(bus: Bus) -> str:
    return bus.key("nodes")


def node_key(bus: Bus, node_id: str) -> str:
    return bus.key("node", node_id)


async def forget(bus: Bus, node_id: str) -> None:
    """Unregister a node known to be dead (the worker supervisor saw it exit): its claims are
    taken over by the next node asked to host those rooms, without waiting for their TTL."""
    await bus.redis.delete(node_key(bus, node_id))
    await bus.redis.zrem(nodes_key(bus), node_id)


class Placement:
    def __init__(self, bus: Bus, public_url: str, *, ttl: float = 15.0, limits: Limits | None = None,
                 worker: int | None = None) -> None:
        self.bus = bus
        self.node_id = bus.node_id
        self.public_url = public_url        # this node's URL (http.node_url), where redirects point
        self.ttl_ms = int(ttl * 1000)
        self.claimed: set[str] = set()
        self.limits = limits or Limits(relay_threshold=0, relay_cpu_percent=70, full_cpu_percent=90)
        self.worker = worker
        self.cpu = CpuMeter()
        # (rooms, viewers) on this node; the Sfu sets it.
        self.load: Callable[[], tuple[int, int]] = lambda: (len(self.claimed), 0)
        self._registered = False

    def _room_key(self, slug: str) -> str:
        return self.bus.key("room", slug, "node")

    def _viewers_key(self, slug: str) -> str:
        return self.bus.key("room", slug, "viewers")

    @property
    def relay_threshold(self) -> int:
        return self.limits.relay_threshold

    @relay_threshold.setter
    def relay_threshold(self, value: int) -> None:
        self.limits = dataclasses.replace(self.limits, relay_threshold=value)

    def relay_source(self, other: RoomOnOtherNode, role: str) -> str | None:
        """Which node feeds a relay of the room ``other`` holds, once the policy
        (``place``) chose to relay: its origin (a relay of a relay where this says so)."""
        return None if role == "host" else other.node_id

    async def publish_viewers(self, slug: str, viewers: int) -> None:
        """The origin's viewer count for ``slug`` (what ``relay_source`` weighs on other nodes)."""
        await self.bus.redis.set(self._viewers_key(slug), str(viewers), px=self.ttl_ms)

    def _node_key(self, node_id: str) -> str:
        return node_key(self.bus, node_id)

    def here(self) -> NodeLoad:
        rooms, viewers = self.load()
        return NodeLoad(self.node_id, self.public_url, rooms, viewers, self.cpu.percent)

    async def register(self) -> None:
        """Publish this node's URL and load; the registration lives one TTL past the last call."""
        rooms, viewers = self.load()
        now = time.time()
        record = {"url": self.public_url, "seen": str(now), "rooms": str(rooms), "viewers": str(viewers),
                  "cpu": f"{self.cpu.sample():.1f}"}
        if self.worker is not None:
            record["worker"] = str(self.worker)
        async with self.bus.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self._node_key(self.node_id), mapping=record)
            pipe.pexpire(self._node_key(self.node_id), self.ttl_ms)
            pipe.zadd(nodes_key(self.bus), {self.node_id: now})
            pipe.zremrangebyscore(nodes_key(self.bus), "-inf", now - 4 * self.ttl_ms / 1000)
            await pipe.execute()
        self._registered = True

    async def node(self, node_id: str) -> NodeLoad | None:
        """A registered node's record, or None when it is not registered (dead or never seen)."""
        return _node_load(node_id, await self.bus.redis.hgetall(self._node_key(node_id)))

    async def live_nodes(self) -> list[NodeLoad]:
        """Every node seen within one TTL, with its load."""
        since = time.time() - self.ttl_ms / 1000
        ids = [raw.decode() for raw in await self.bus.redis.zrangebyscore(nodes_key(self.bus), since, "+inf")]
        if not ids:
            return []
        async with self.bus.redis.pipeline(transaction=False) as pipe:
            for node_id in ids:
                pipe.hgetall(self._node_key(node_id))
            records = await pipe.execute()
        return [load for node_id, record in zip(ids, records) if (load := _node_load(node_id, record))]

    async def place(self, slug: str, role: str, *, room_viewers: int = 0, relays: bool = False) -> Placed:
        """Where a participant with ``role`` joining ``slug`` is served (rooms.placement_policy).
        ``room_viewers``: the room's viewers here when this node is its origin."""
        owner = await self.bus.redis.get(self._room_key(slug))
        owner_id = owner.decode() if owner else ""
        here = self.here()
        origin: NodeLoad | None = None
        if owner_id == self.node_id:
            origin = here
        elif owner_id:
            origin = await self.node(owner_id)      # None: its holder is gone, the claim is free
            if origin is not None:
                counted = await self.bus.redis.get(self._viewers_key(slug))
                room_viewers = int(counted) if counted else 0
        if origin is None and not self.limits.full(here):
            return HERE             # the common case costs no registry scan
        if origin is here and (role == "host" or not relays):
            return HERE
        return place(role, here, origin, room_viewers, await self.live_nodes(), self.limits, relays=relays)

    async def claim(self, slug: str) -> None:
        """Claim ``slug`` for this node, or raise RoomOnOtherNode naming the owner."""
        if not self._registered:
            await self.register()       # a holder is registered before it holds anything
        key = self._room_key(slug)
        redis = self.bus.redis
        if await redis.set(key, self.node_id, nx=True, px=self.ttl_ms):
            self.claimed.add(slug)
            return
        owner = await redis.get(key)
        owner_id = owner.decode() if owner else ""
        if owner_id == self.node_id or not owner_id:
            # Ours already, or it expired between the two calls: take it.
            await redis.set(key, self.node_id, px=self.ttl_ms)
            self.claimed.add(slug)
            return
        url = await redis.hget(self._node_key(owner_id), "url")
        if url is None and await redis.eval(_TAKE_OVER, 1, key, owner_id, self.node_id, self.ttl_ms):
            log.info("room claim taken over from a node that is gone", extra={"room": slug, "node": owner_id})
            self.claimed.add(slug)
            return
        viewers = await redis.get(self._viewers_key(slug))
        raise RoomOnOtherNode(owner_id, url.decode() if url else "", int(viewers or 0))

    async def unregister(self) -> None:
        """A clean shutdown: the node leaves the registry (its claims were released room by room)."""
        await forget(self.bus, self.node_id)

    async def owner(self, slug: str) -> tuple[str, str] | None:
        """(node id, public URL) of the node hosting ``slug`` now; None when no node does."""
        owner = await self.bus.redis.get(self._room_key(slug))
        if not owner:
            return None
        url = await self.bus.redis.hget(self._node_key(owner.decode()), "url")
        return owner.decode(), url.decode() if url else ""

    async def release(self, slug: str) -> None:
        self.claimed.discard(slug)
        await self.bus.redis.eval(_RELEASE, 1, self._room_key(slug), self.node_id)
        await self.bus.redis.delete(self._viewers_key(slug))

    async def refresh(self) -> list[str]:
        """Extend every claim; returns the rooms whose claim was lost (expired and taken)."""
        lost = []
        await self.register()
        for slug in list(self.claimed):
            ok = await self.bus.redis.eval(_REFRESH, 1, self._room_key(slug), self.node_id, self.ttl_ms)
            if not ok:
                lost.append(slug)
            else:
                await self.bus.redis.pexpire(self._viewers_key(slug), self.ttl_ms)
        return lost

    async def run(self) -> None:
        interval = self.ttl_ms / 3000
        while True:
            try:
                lost = await self.refresh()
                for slug in lost:
                    log.warning("room claim lost", extra={"room": slug})
                    # Re-take it if nobody else has: a Redis restart loses every key.
                    try:
                        await self.claim(slug)
                    except RoomOnOtherNode:
                        pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Names the dependency: an operator reads "Redis" and knows where to look.
                log.warning("room placement cannot reach Redis (REDIS_URL); retrying",
                            extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
            await asyncio.sleep(interval)


def _node_load(node_id: str, record: dict[bytes, bytes]) -> NodeLoad | None:
    if not record or b"url" not in record:
        return None

    def number(field: bytes) -> float:
        try:
            return float(record.get(field, b"0"))
        except ValueError:
            return 0.0

    return NodeLoad(node_id, record[b"url"].decode(), int(number(b"rooms")), int(number(b"viewers")),
                    number(b"cpu"))
