"""Fixed-window counters in Redis, shared by every node.

Keys hold a keyed hash of what is limited (an address, a network), never the
raw value, so Redis contents reveal nothing the audit may not keep.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def network_of(address: str) -> str:
    """The client's network: IPv4 /24, IPv6 /48 (one household or office)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def mailbox_of(email: str) -> str:
    """The mailbox an address delivers to, for counting: ``x+anything@d`` is ``x@d``
    (sub-addressing would otherwise give one inbox unlimited sign-in links)."""
    local, at, domain = email.partition("@")
    return local.split("+", 1)[0] + at + domain


def opaque(secret: str, value: str) -> str:
    return hmac.new(secret.encode(), value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]


class LocalWindows:
    """Per-node fixed windows, used while Redis is unreachable: limits then hold per
    node instead of across nodes, rather than failing open or failing the request."""

    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, int]] = {}

    def hit(self, key: str, *, limit: int, window: float) -> float:
        now = time.monotonic()
        started, count = self._windows.get(key, (now, 0))
        if now - started >= window:
            started, count = now, 0
        if len(self._windows) >= self.MAX_KEYS:
            self._windows = {k: v for k, v in self._windows.items() if now - v[0] < window}
        self._windows[key] = (started, count + 1)
        return 0.0 if count + 1 <= limit else max(1.0, started + window - now)


async def hit(client: redis.Redis, key: str, *, limit: int, window: float,
              fallback: LocalWindows | None = None) -> float:
    """Count one hit; 0 when within ``limit``, else seconds until the window resets.

    With ``fallback``, an unreachable Redis counts on this node instead of raising."""
    seconds = max(1, int(window))
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, seconds, nx=True)
            pipe.ttl(key)
            count, _, ttl = await pipe.execute()
    except (RedisConnectionError, RedisTimeoutError, OSError):
        if fallback is None:
            raise
        return fallback.hit(key, limit=limit, window=window)
    if count <= limit:
        return 0.0
    return float(ttl if ttl and ttl > 0 else seconds)
