"""Which addresses ICE uses, in one place, for the server and test clients.

aioice gathers host candidates from every interface (skipping exactly
127.0.0.1) through ``aioice.ice.get_host_addresses`` and checks every remote
candidate with ``aioice.ice.validate_remote_candidate`` -- SDP, trickled and
mDNS-resolved ones alike.  ``configure`` wraps both once per process:
host candidates come from ``ice.addresses`` and remote candidates outside
``ice.allowed_networks`` are dropped, so nobody can steer the server into
sending connectivity checks elsewhere.  ``announce`` rewrites host
candidates in an SDP to the public address of a 1:1 NAT.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Iterable

import aioice.ice
from aiortc import RTCBundlePolicy, RTCConfiguration

from .turn import ice_servers

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_original_get_host_addresses = aioice.ice.get_host_addresses
_original_validate = aioice.ice.validate_remote_candidate


@dataclass(frozen=True)
class IcePolicy:
    addresses: tuple[str, ...] = ()             # empty: aioice's default (every interface)
    allowed: tuple[IpNetwork, ...] = ()         # empty: any remote address

    def allows(self, host: str) -> bool:
        if not self.allowed:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.allowed)


_policy = IcePolicy()


def policy_for(addresses: Iterable[str], allowed_networks: Iterable[str] = ()) -> IcePolicy:
    addresses = tuple(addresses)
    nets = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)
    if not nets and addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses):
        # A loopback-only server can only ever reach loopback peers.
        nets = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    return IcePolicy(addresses, nets)


def configure(addresses: Iterable[str], allowed_networks: Iterable[str] = ()) -> IcePolicy:
    """Install the policy for every RTCPeerConnection in this process."""
    global _policy
    _policy = policy_for(addresses, allowed_networks)
    aioice.ice.get_host_addresses = _host_addresses
    aioice.ice.validate_remote_candidate = _validate_remote_candidate
    return _policy


CONSENT_FAILURES = 5


def set_consent_timeout(seconds: float) -> float:
    """Drop a peer whose consent (RFC 7675) lapsed for ``seconds``; returns the check interval.

    aioice checks consent every CONSENT_INTERVAL (randomized 0.8-1.2x), each check
    given one 0.5 s RTO, and closes the connection after CONSENT_FAILURES misses in
    a row: the interval is chosen so the worst case stays within ``seconds``.
    """
    # 95%: a margin for event-loop lag.
    interval = max(0.1, (0.95 * seconds / CONSENT_FAILURES - 0.5) / 1.2)
    aioice.ice.CONSENT_FAILURES = CONSENT_FAILURES
    aioice.ice.CONSENT_INTERVAL = interval
    return interval


def current() -> IcePolicy:
    return _policy


def host_addresses() -> list[str]:
    """The addresses server candidates are gathered on (IPv4 and IPv6)."""
    return _host_addresses(True, True)


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if not _policy.addresses:
        return _original_get_host_addresses(use_ipv4, use_ipv6)
    out = []
    for addr in _policy.addresses:
        version = ipaddress.ip_address(addr).version
        if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
            out.append(addr)
    return out


def _validate_remote_candidate(candidate: Any, network_host: str) -> str:
    host = _original_validate(candidate, network_host)
    if not _policy.allows(host):
        raise ValueError("outside ice.allowed_networks")
    return host


_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( \d+ typ host.*)$", re.M)
_CONNECTION = re.compile(r"^c=IN (IP4|IP6) (\S+)(\r?)$", re.M)


def announce(sdp: str, announced: str) -> str:
    """Replace host candidate addresses (and c= lines) with ``announced``."""
    if not announced:
        return sdp
    family = "IP6" if ipaddress.ip_address(announced).version == 6 else "IP4"
    sdp = _CANDIDATE.sub(lambda m: m.group(1) + announced + m.group(3), sdp)
    return _CONNECTION.sub(lambda m: f"c=IN {family} {announced}{m.group(3)}", sdp)


def rtc_configuration(*, max_bundle: bool = False) -> RTCConfiguration:
    """No STUN on the server: its addresses are configured, not discovered.

    ``max_bundle`` (the server's own peers): every m-line on one transport from
    the start.  aiortc's default "balanced" policy pre-bundles each m-line onto
    the first one of its kind, and when the answer's BUNDLE group then moves the
    first video onto the audio transport, a second video m-line stays on the
    stopped video transport and never sends: a late viewer of a host sharing a
    screen and a camera got one video only.  Browsers, OBS and WHIP/WHEP
    clients all bundle (RFC 9725 requires it)."""
    if max_bundle:
        return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    return RTCConfiguration(iceServers=[])


def browser_ice_servers(config: Any, subject: str | None = None) -> list[dict[str, Any]]:
    """The iceServers list handed to browsers (RTCConfiguration shape)."""
    return [server.as_browser() for server in ice_servers(config, subject)]
