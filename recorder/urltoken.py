"""Signed, short-lived URL tokens for the HLS of gated rooms.

A CDN fetches playlists, parts and segments without the viewer's cookie, so a
gated room's HLS URLs carry ``?token=`` instead: proof that the gate admitted
someone to this episode a moment ago.  The origin checks it with no database
query (HMAC over the episode id and the expiry), which also spares every
blocking playlist poll the gate's queries.

Format: ``<expiry>.<mac>`` where expiry is Unix seconds and mac is the first
16 bytes of HMAC-SHA256(key, "ods-hls-v1|<episode id>|<expiry>"), base64url
without padding; key = HMAC-SHA256(secret.key, "hls-url-token").  An edge that
knows the derived key can check a token with the same three lines.

Nothing in a token is per viewer: everyone admitted to an episode within the
same quarter of the lifetime gets the same token (the expiry is rounded up to
that quantum), so a shared cache keeps one copy per URL, not one per viewer.
Rotation: set the new ``secret.key`` and keep the old one in
``hls.token_previous_key`` for one token lifetime; tokens signed with either
are accepted, new tokens use the new key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from dataclasses import dataclass
from typing import Callable

from odsmedia.errors import ApiError

VERSION = b"ods-hls-v1"
MAC_BYTES = 16
# Tokens are minted for [lifetime, lifetime * (1 + 1/QUANTA)]; shared within a quantum.
QUANTA = 4


def derive_key(secret: str) -> bytes:
    """The HLS token key from the node's secret (the secret itself never signs URLs)."""
    return hmac.new(secret.encode(), b"hls-url-token", hashlib.sha256).digest()


def expiry(token: str) -> int:
    """The expiry (Unix seconds) of a token this origin minted (unchecked: for display)."""
    return int(token.partition(".")[0])


@dataclass(frozen=True, slots=True)
class UrlGrant:
    """What a valid token grants: the episode's media until ``expires`` (Unix seconds)."""

    episode_id: int
    expires: int

    def remaining(self, now: float) -> int:
        return max(0, int(self.expires - now))


class UrlTokens:
    def __init__(self, key: bytes, *, lifetime: float, previous: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.previous = previous
        self.lifetime = lifetime
        self.clock = clock

    def _mac(self, key: bytes, episode_id: int, expires: int) -> str:
        message = b"|".join((VERSION, str(episode_id).encode(), str(expires).encode()))
        digest = hmac.new(key, message, hashlib.sha256).digest()[:MAC_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def mint(self, episode_id: int) -> str:
        quantum = max(1, int(self.lifetime / QUANTA))
        expires = math.ceil((self.clock() + self.lifetime) / quantum) * quantum
        return f"{expires}.{self._mac(self.key, episode_id, expires)}"

    def verify(self, token: str, episode_id: int) -> UrlGrant:
        """The grant, or a 403 ApiError: ``token_malformed``, ``token_invalid`` (forged, another
        episode, an unknown key) or ``token_expired``."""
        expiry, _, mac = token.partition(".")
        if not (expiry.isascii() and expiry.isdigit()) or len(expiry) > 12 or len(mac) != 22:
            raise ApiError(403, "token_malformed", "the URL token is not <expiry>.<signature>")
        expires = int(expiry)
        keys = (self.key,) if self.previous is None else (self.key, self.previous)
        if not any(hmac.compare_digest(mac, self._mac(key, episode_id, expires)) for key in keys):
            raise ApiError(403, "token_invalid", "the URL token was not signed for this episode")
        now = self.clock()
        if expires <= now:
            raise ApiError(403, "token_expired", "the URL token has expired; reload the page for a new one")
        if expires > now + self.lifetime * (1 + 1 / QUANTA) + 1:
            # Signed, but for longer than this origin hands out (an old, longer setting).
            raise ApiError(403, "token_invalid", "the URL token lives longer than this origin allows")
        return UrlGrant(episode_id, expires)
