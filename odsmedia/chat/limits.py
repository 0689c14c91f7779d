"""Posting limits shared by every node: a per-user rate and slow mode, in Redis.

Both are counters with an expiry, so they hold across nodes and vanish on
their own.  When Redis is unreachable posting keeps working (Postgres is the
system of record) under a per-node fallback limiter instead of failing open
without any limit.
"""

from __future__ import annotations

import math
import time
from collections import deque

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import metrics
from ..bus import Bus
from .items import ChatError

WINDOW = 10.0

# One post against every window that applies, in one atomic round trip: the
# identity's window (KEYS[1]), then -- when their limits are non-zero -- the
# client network's window in this room (KEYS[3]) and the room's (KEYS[4]), then
# the identity's slow-mode key (KEYS[2]).  The identity's window counts every
# attempt (a flood stays refused); a post refused by a later check is taken
# back from the windows it was already counted in.
# Returns {verdict, ms to wait}: 0 ok, 1 identity rate, 2 slow mode, 3 network rate, 4 room rate.
_CHECK = """
local window = ARGV[1]
local function count(key)
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, window) end
  return n
end
if count(KEYS[1]) > tonumber(ARGV[2]) then
  return {1, redis.call('PTTL', KEYS[1])}
end
local counted = {KEYS[1]}
local limits = {{KEYS[3], tonumber(ARGV[4]), 3}, {KEYS[4], tonumber(ARGV[5]), 4}}
for _, limit in ipairs(limits) do
  if limit[2] > 0 then
    if count(limit[1]) > limit[2] then
      redis.call('DECR', limit[1])
      for _, key in ipairs(counted) do redis.call('DECR', key) end
      return {limit[3], redis.call('PTTL', limit[1])}
    end
    table.insert(counted, limit[1])
  end
end
if tonumber(ARGV[3]) > 0 then
  if not redis.call('SET', KEYS[2], '1', 'PX', ARGV[3], 'NX') then
    for _, key in ipairs(counted) do redis.call('DECR', key) end
    return {2, redis.call('PTTL', KEYS[2])}
  end
end
return {0, 0}
"""


class PostLimits:
    """Posting windows: per identity (``chat.rate_per_10s``), and for viewers also per
    client network in a room (``chat.rate_per_network_10s``) and per room
    (``chat.rate_per_room_10s``), so many identities from one machine cannot flood."""

    def __init__(self, bus: Bus, rate_per_10s: int, *, network_rate: int = 0, room_rate: int = 0) -> None:
        self.bus = bus
        self.rate = rate_per_10s
        self.network_rate = network_rate
        self.room_rate = room_rate
        self._script = bus.redis.register_script(_CHECK)
        self._local: dict[str, deque[float]] = {}
        self._local_slow: dict[str, float] = {}

    async def check(self, room_slug: str, subject: str, *, slow_seconds: int, network: str | None = None) -> None:
        """Count one post, or raise ChatError rate_limited / slow_mode with retry_after.

        ``network`` (a keyed hash) is given for viewers: hosts and moderators are counted
        only per identity."""
        network_rate = self.network_rate if network else 0
        room_rate = self.room_rate if network else 0
        keys = [self.bus.key("chat", "rate", room_slug, subject), self.bus.key("chat", "slow", room_slug, subject),
                self.bus.key("chat", "netrate", room_slug, network or "-"), self.bus.key("chat", "roomrate", room_slug)]
        try:
            verdict, ttl_ms = await self._script(
                keys=keys, args=[int(WINDOW * 1000), self.rate, slow_seconds * 1000, network_rate, room_rate])
        except (RedisConnectionError, RedisTimeoutError, OSError):
            self._check_local(room_slug, subject, network if network_rate else None, room_rate, slow_seconds)
            return
        wait = max(ttl_ms, 0) / 1000
        if verdict == 1:
            raise _rate_limited(self.rate, wait)
        if verdict == 2:
            raise _slow(slow_seconds, wait)
        if verdict == 3:
            raise _rate_limited(network_rate, wait, limit="chat_network_rate",
                                message=f"at most {network_rate} posts per 10 seconds from your network in this room")
        if verdict == 4:
            raise _rate_limited(room_rate, wait, limit="chat_room_rate",
                                message=f"this room takes at most {room_rate} posts per 10 seconds; try again shortly")

    def _window(self, key: str, now: float) -> deque[float]:
        stamps = self._local.setdefault(key, deque())
        while stamps and stamps[0] <= now - WINDOW:
            stamps.popleft()
        return stamps

    def _check_local(self, room_slug: str, subject: str, network: str | None, room_rate: int,
                     slow_seconds: int) -> None:
        now = time.monotonic()
        key = room_slug + "\0" + subject
        stamps = self._window(key, now)
        if len(stamps) >= self.rate:
            raise _rate_limited(self.rate, stamps[0] + WINDOW - now)
        others = []
        if network is not None:
            others.append((self._window(room_slug + "\0net\0" + network, now), self.network_rate, "chat_network_rate"))
        if room_rate:
            others.append((self._window(room_slug + "\0room", now), room_rate, "chat_room_rate"))
        for window, rate, limit in others:
            if len(window) >= rate:
                raise _rate_limited(rate, window[0] + WINDOW - now, limit=limit)
        if slow_seconds > 0:
            last = self._local_slow.get(key)
            if last is not None and now - last < slow_seconds:
                raise _slow(slow_seconds, last + slow_seconds - now)
            self._local_slow[key] = now
        stamps.append(now)
        for window, _, _ in others:
            window.append(now)
        if len(self._local) > 100_000:  # bound memory while Redis is away for long
            self._local.clear()
            self._local_slow.clear()


def _rate_limited(rate: int, retry_after: float, *, limit: str = "", message: str = "") -> ChatError:
    extra = {}
    if limit:
        metrics.abuse_refusals.labels(limit).inc()
        extra["limit"] = limit
    return ChatError("rate_limited", message or f"at most {rate} posts per 10 seconds",
                     retry_after=math.ceil(max(retry_after, 0.001) * 10) / 10, **extra)


def _slow(seconds: int, retry_after: float) -> ChatError:
    return ChatError("slow_mode", f"slow mode: one post per {seconds} seconds",
                     retry_after=math.ceil(max(retry_after, 0.001) * 10) / 10, slow_mode=seconds)
