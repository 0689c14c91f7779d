"""Abuse limits per client network: caps on what one network holds open at once.

One address can open many anonymous identities (each browser profile, each
cleared cookie jar is a new guest), so per-identity limits alone let a single
machine fill a room.  This module caps, per client network (IPv4 /24, IPv6
/48, as ``auth.ratelimit.network_of`` draws them), how many signaling
participants, chat sockets and WHEP sessions it holds open on this node at
once.  The per-network and per-room chat *post* rates live with the other
posting limits (``chat.limits``).

Caps count per node (a lease is released when its socket or session ends, and
nothing survives a crash to leak); a deployment of N nodes admits at most N
times the cap from one network, which is the point: a bound, not a quota.
Nothing here is stored: the network is held in memory as a keyed hash only.
Over a cap the entry is refused with ``429 rate_limited`` and ``retry_after``,
and ``ods_abuse_refusals_total{limit}`` counts it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from aiohttp import web

from . import metrics
from .auth.ratelimit import network_of, opaque
from .config import Config
from .errors import ApiError
from .privacy.region import client_ip

# Seconds a refused client is told to wait: held sessions end on their own time, so this
# is a polite pause, not a window.
RETRY_AFTER = 10


class Held(str, enum.Enum):
    SIGNALING = "signaling_participants"
    CHAT = "chat_sockets"
    WHEP = "whep_sessions"


_SETTING = {
    Held.SIGNALING: "abuse.signaling_per_network",
    Held.CHAT: "abuse.chat_sockets_per_network",
    Held.WHEP: "abuse.whep_per_network",
}


def refused(limit: str, message: str, retry_after: float) -> ApiError:
    metrics.abuse_refusals.labels(limit).inc()
    err = ApiError(429, "rate_limited", message, limit=limit, retry_after=retry_after)
    err.headers["Retry-After"] = str(max(1, round(retry_after)))
    return err


@dataclass
class Lease:
    caps: "NetworkCaps"
    key: tuple[Held, str]
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.caps._release(self.key)


@dataclass
class NetworkCaps:
    """This node's open sessions per (kind, network); ``app[ABUSE]``."""

    config: Config
    secret: str
    _held: dict[tuple[Held, str], int] = field(default_factory=dict)

    def network(self, request: web.Request) -> str:
        """The request's network as a keyed hash (never the address itself)."""
        return opaque(self.secret, network_of(client_ip(request, self.config["http.trusted_proxies"])))

    def acquire(self, kind: Held, request: web.Request) -> Lease:
        cap = self.config[_SETTING[kind]]
        key = (kind, self.network(request))
        held = self._held.get(key, 0)
        if cap and held >= cap:
            raise refused(kind.value, f"too many {kind.value.replace('_', ' ')} from your network (at most {cap})",
                          RETRY_AFTER)
        self._held[key] = held + 1
        return Lease(self, key)

    def _release(self, key: tuple[Held, str]) -> None:
        left = self._held.get(key, 0) - 1
        if left > 0:
            self._held[key] = left
        else:
            self._held.pop(key, None)


# This node's per-network caps, set by ``make_app``.
ABUSE: web.AppKey[NetworkCaps] = web.AppKey("abuse", NetworkCaps)
