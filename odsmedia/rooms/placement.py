"""Which node hosts each live room: the node registry and room claims in Redis.

A room's media lives on one node (the LiveKit model). The first node to take
a participant claims ``room:{slug}:node`` with a TTL and keeps refreshing it
while the room is live; another node asked to host the same room learns the
owner's public URL and refuses with ``room_on_other_node`` so the client (or
a load balancer) can go there. A node that dies stops refreshing, and its
claims expire after ``ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..bus import Bus

log = logging.getLogger("odsmedia.placement")

# Compare-and-delete / compare-and-refresh: only the owner may touch its claim.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"
_REFRESH = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end"


class RoomOnOtherNode(Exception):
    def __init__(self, node_id: str, url: str, viewers: int = 0) -> None:
        super().__init__(f"room is hosted by node {node_id}")
        self.node_id = node_id
        self.url = url
        self.viewers = viewers          # the origin's viewer count for the room, as it last published it


class Placement:
    def __init__(self, bus: Bus, public_url: str, *, ttl: float = 15.0, relay_threshold: int = 200) -> None:
        self.bus = bus
        self.node_id = bus.node_id
        self.public_url = public_url
        self.ttl_ms = int(ttl * 1000)
        self.relay_threshold = relay_threshold
        self.claimed: set[str] = set()

    def _room_key(self, slug: str) -> str:
        return self.bus.key("room", slug, "node")

    def _viewers_key(self, slug: str) -> str:
        return self.bus.key("room", slug, "viewers")

    def relay_source(self, other: RoomOnOtherNode, role: str) -> str | None:
        """The policy: should this node serve a participant of a room live on ``other``'s node, as
        a relay, and fed by which node?  None: no, answer room_on_other_node.  Publishers (hosts)
        always go to the origin; a viewer is relayed once the origin has ``relay_threshold``
        viewers."""
        if role == "host" or other.viewers < self.relay_threshold:
            return None
        return other.node_id

    async def publish_viewers(self, slug: str, viewers: int) -> None:
        """The origin's viewer count for ``slug`` (what ``relay_source`` weighs on other nodes)."""
        await self.bus.redis.set(self._viewers_key(slug), str(viewers), px=self.ttl_ms)

    def _node_key(self, node_id: str) -> str:
        return self.bus.key("node", node_id)

    async def register(self) -> None:
        await self.bus.redis.hset(
            self._node_key(self.node_id),
            mapping={"url": self.public_url, "seen": str(time.time()), "rooms": str(len(self.claimed))},
        )
        await self.bus.redis.pexpire(self._node_key(self.node_id), self.ttl_ms)

    async def claim(self, slug: str) -> None:
        """Claim ``slug`` for this node, or raise RoomOnOtherNode naming the owner."""
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
        viewers = await redis.get(self._viewers_key(slug))
        raise RoomOnOtherNode(owner_id, url.decode() if url else "", int(viewers or 0))

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
