"""A client's coarse region, derived from its IP address and never stored with it.

The policy promises request logs and sign-in audits keep an "IP-derived
region" only.  The address is looked up in memory (iptocc: offline
regional-registry delegation data, no network) and dropped; only the
ISO 3166 country code, or a class such as ``loopback`` or ``private``,
is kept.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from aiohttp import web

try:  # optional: without it every public address maps to "unknown"
    import iptocc
except ImportError:  # pragma: no cover
    iptocc = None


@lru_cache(maxsize=8)
def _networks(trusted: tuple[str, ...]) -> tuple[ipaddress._BaseNetwork, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in trusted)


def client_ip(request: web.Request, trusted_proxies: tuple[str, ...] = ()) -> str:
    """The peer address, or the first untrusted hop of X-Forwarded-For when the peer is a trusted proxy."""
    peer = request.remote or ""
    if not trusted_proxies:
        return peer
    nets = _networks(trusted_proxies)

    def trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in n for n in nets)

    if not trusted(peer):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return peer


def region_of(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    if ip.is_loopback:
        return "loopback"
    if ip.is_private or ip.is_link_local:
        return "private"
    if iptocc is None:
        return "unknown"
    code = iptocc.country_code(str(ip))
    return code or "unknown"


def client_region(request: web.Request, trusted_proxies: tuple[str, ...] = ()) -> str:
    return region_of(client_ip(request, trusted_proxies))
