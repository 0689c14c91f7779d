"""Fixed-window counters in Redis, shared by every node.

Keys hold a keyed hash of what is limited (an address, a network), never the
raw value, so Redis contents reveal nothing the audit may not keep.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

import redis.asyncio as redis


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


def opaque(secret: str, value: str) -> str:
    return hmac.new(secret.encode(), value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]


async def hit(client: redis.Redis, key: str, *, limit: int, window: float) -> float:
    """Count one hit; 0 when within ``limit``, else seconds until the window resets."""
    seconds = max(1, int(window))
    async with client.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, seconds, nx=True)
        pipe.ttl(key)
        count, _, ttl = await pipe.execute()
    if count <= limit:
        return 0.0
    return float(ttl if ttl and ttl > 0 else seconds)
