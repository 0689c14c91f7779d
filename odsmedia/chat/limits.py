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

from ..bus import Bus
from .items import ChatError

WINDOW = 10.0

# INCR the window counter (set its expiry on first use) and, when slow mode is
# on, claim the slow-mode key; one round trip, atomic.
_CHECK = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n > tonumber(ARGV[2]) then
  return {1, redis.call('PTTL', KEYS[1])}
end
if tonumber(ARGV[3]) > 0 then
  if not redis.call('SET', KEYS[2], '1', 'PX', ARGV[3], 'NX') then
    redis.call('DECR', KEYS[1])
    return {2, redis.call('PTTL', KEYS[2])}
  end
end
return {0, 0}
"""


class PostLimits:
    def __init__(self, bus: Bus, rate_per_10s: int) -> None:
        self.bus = bus
        self.rate = rate_per_10s
        self._script = bus.redis.register_script(_CHECK)
        self._local: dict[str, deque[float]] = {}
        self._local_slow: dict[str, float] = {}

    async def check(self, room_slug: str, subject: str, *, slow_seconds: int) -> None:
        """Count one post, or raise ChatError rate_limited / slow_mode with retry_after."""
        keys = [self.bus.key("chat", "rate", room_slug, subject), self.bus.key("chat", "slow", room_slug, subject)]
        try:
            verdict, ttl_ms = await self._script(keys=keys, args=[int(WINDOW * 1000), self.rate, slow_seconds * 1000])
        except (RedisConnectionError, RedisTimeoutError, OSError):
            self._check_local(room_slug + "\0" + subject, slow_seconds)
            return
        if verdict == 1:
            raise _rate_limited(self.rate, max(ttl_ms, 0) / 1000)
        if verdict == 2:
            raise _slow(slow_seconds, max(ttl_ms, 0) / 1000)

    def _check_local(self, key: str, slow_seconds: int) -> None:
        now = time.monotonic()
        stamps = self._local.setdefault(key, deque())
        while stamps and stamps[0] <= now - WINDOW:
            stamps.popleft()
        if len(stamps) >= self.rate:
            raise _rate_limited(self.rate, stamps[0] + WINDOW - now)
        if slow_seconds > 0:
            last = self._local_slow.get(key)
            if last is not None and now - last < slow_seconds:
                raise _slow(slow_seconds, last + slow_seconds - now)
            self._local_slow[key] = now
        stamps.append(now)
        if len(self._local) > 100_000:  # bound memory while Redis is away for long
            self._local.clear()
            self._local_slow.clear()


def _rate_limited(rate: int, retry_after: float) -> ChatError:
    return ChatError("rate_limited", f"at most {rate} posts per 10 seconds",
                     retry_after=math.ceil(max(retry_after, 0.001) * 10) / 10)


def _slow(seconds: int, retry_after: float) -> ChatError:
    return ChatError("slow_mode", f"slow mode: one post per {seconds} seconds",
                     retry_after=math.ceil(max(retry_after, 0.001) * 10) / 10, slow_mode=seconds)
