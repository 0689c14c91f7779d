"""The episode HLS origin as a CDN sees it: who may fetch, and what a shared cache may keep.

Every playlist, part, segment and init request resolves a ``MediaAccess``:

- a public room: no identity is needed (``Gate.open_to_all``), so the gate's
  lookups are skipped and every response may be kept by a shared cache;
- a ``?token=`` URL token (``urltoken``): checked with an HMAC, no query; the
  response is shared-cacheable for no longer than the token lives;
- otherwise the gate admits the request as before (cookie, bearer token), the
  response stays ``private``, and a gated room's playlist carries a freshly
  minted token on its URIs so the media requests after it need no cookie.

Blocking playlist polls of a live episode would each look the episode and
its room up in Postgres; ``LiveEpisodes`` keeps both for the episodes this
node records, for as long as their live playlist is open (the recording's
end is the invalidation) and at most ``ROOM_TTL`` seconds, so a room's new
access policy applies within that.

``Cors`` answers players on other origins (``hls.cors_origins``): preflights,
``Access-Control-Allow-Origin`` on every episode media response, ``Vary:
Origin`` when the answer depends on it.  ``LivePollers`` counts distinct
live-playlist pollers per minute without keeping who they are.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from dataclasses import dataclass
from typing import Callable

from aiohttp import web

from odsmedia.analytics.sink import audience, opted_out
from odsmedia.errors import ApiError, path_id
from odsmedia.gate import Entry, Gate
from odsmedia.privacy.region import client_region
from odsmedia.rooms import directory
from odsmedia.rooms.directory import RoomRecord

from . import episodes
from .episodes import Episode
from .urltoken import expiry

# A year: parts, segments and init sections never change under their name.
IMMUTABLE_SECONDS = 31536000
# Longest a cached live episode's room (its access policy) is trusted without a query.
ROOM_TTL = 5.0
# The anonymous-viewer cookie (auth.anonymous): a public room's poller without the gate's identity.
ANON_COOKIE = "ods_anon"
# Paths whose responses the CORS policy covers: an episode's playlists and media.
# Playlists (live, the first rendition's, the multivariant one, another rendition's) and media
# files (another rendition's are prefixed with its name and a dot).
_RENDITION = r"(?:camera|screen)(?:-[0-9]+)?"
MEDIA_PATH = re.compile(r"^/episodes/[0-9]+/(?:(?:live|index|master|" + _RENDITION + r")\.m3u8|(?:" + _RENDITION
                        + r"\.)?(?:[0-9]+-[0-9]+(?:\.[0-9]+)?\.m4s|init-[0-9]+\.mp4))$")
_URI_ATTR = re.compile(r'URI="([^"?]+)"')
_URI_LINE = re.compile(r"^(?!#)[^\s?]+$", re.M)
# (id of a rendered playlist, token) -> (that playlist, its tokenized text); the playlist
# is kept so its id cannot be reused by another string while the entry lives.
_TOKENIZED: dict[tuple[int, str], tuple[str, str]] = {}


@dataclass(frozen=True, slots=True)
class MediaAccess:
    episode: Episode
    room: RoomRecord
    shared: bool              # a shared cache (CDN) may keep the response
    token: str | None = None  # the URL token the playlist's URIs carry (gated rooms)
    expires: int | None = None
    subject: str = ""         # the admitted identity, when the gate ran

    def uri(self, name: str) -> str:
        return name if self.token is None else f"{name}?token={self.token}"

    def carry_token(self, playlist: str) -> str:
        """``playlist`` with every URI (segment lines, URI="..." attributes) carrying the token."""
        if self.token is None:
            return playlist
        # The pollers woken by one part share one rendered text and (within a quarter of
        # the token lifetime) one token: rewrite it once for all of them.
        key = (id(playlist), self.token)
        hit = _TOKENIZED.get(key)
        if hit is not None and hit[0] is playlist:
            return hit[1]
        suffix = f"?token={self.token}"
        text = _URI_ATTR.sub(lambda m: f'URI="{m.group(1)}{suffix}"', playlist)
        text = _URI_LINE.sub(lambda m: m.group(0) + suffix, text)
        if len(_TOKENIZED) >= 64:
            _TOKENIZED.clear()
        _TOKENIZED[key] = (playlist, text)
        return text

    def _ceiling(self, seconds: int) -> int:
        # A cached copy must not outlive the token it was fetched with.
        if self.expires is None:
            return seconds
        return min(seconds, max(0, int(self.expires - time.time())))

    def media_cache(self) -> str:
        """Cache-Control of parts, segments and init sections (immutable under their name)."""
        if not self.shared:
            return f"private, max-age={IMMUTABLE_SECONDS}, immutable"
        seconds = self._ceiling(IMMUTABLE_SECONDS)
        return f"public, max-age={seconds}, s-maxage={seconds}, immutable"

    def playlist_cache(self, seconds: int) -> str:
        """Cache-Control of a live playlist response a cache may keep ``seconds``."""
        if not self.shared:
            return f"private, max-age={seconds}"
        seconds = self._ceiling(seconds)
        return f"public, max-age={seconds}, s-maxage={seconds}"

    def revalidated(self) -> str:
        """Cache-Control of a playlist built from the rows (EVENT or VOD): always revalidated (ETag)."""
        return "public, no-cache" if self.shared else "no-cache"


class LiveEpisodes:
    """Episode and room of the live episodes this node records, kept between polls."""

    def __init__(self, recording_live: Callable[[Episode], bool], *, ttl: float = ROOM_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.recording_live = recording_live
        self.ttl = ttl
        self.clock = clock
        self.entries: dict[int, tuple[Episode, RoomRecord, float]] = {}
        self.pending: dict[int, asyncio.Future] = {}
        self.queries = 0          # lookups that went to Postgres (the bench reads it)

    async def get(self, db, episode_id: int) -> tuple[Episode, RoomRecord]:
        if self.ttl <= 0:
            return await self._lookup(db, episode_id)     # off: every request asks Postgres
        entry = self.entries.get(episode_id)
        if entry is not None and self.clock() - entry[2] < self.ttl and self.recording_live(entry[0]):
            return entry[0], entry[1]
        self.entries.pop(episode_id, None)
        # One lookup at a time per episode: a thousand pollers woken by the same part and
        # finding the entry expired wait for one query, not a thousand.
        pending = self.pending.get(episode_id)
        if pending is None:
            pending = self.pending[episode_id] = asyncio.ensure_future(self._lookup(db, episode_id))
            pending.add_done_callback(lambda _: self.pending.pop(episode_id, None))
        return await asyncio.shield(pending)

    async def _lookup(self, db, episode_id: int) -> tuple[Episode, RoomRecord]:
        self.queries += 1
        episode = await episodes.get(db, episode_id)
        if episode is None:
            raise ApiError(404, "episode_not_found", "no such episode")
        room = await directory.require(db, episode.room_slug)
        if episode.status == "live" and self.recording_live(episode) and self.ttl > 0:
            if len(self.entries) > 1000:
                self.entries.clear()
            self.entries[episode.id] = (episode, room, self.clock())
        return episode, room


class LivePollers:
    """Distinct pollers of each live playlist per minute, counted without cookies or addresses.

    A poller is a keyed hash of (region, user agent, subject or anonymous cookie); the
    key is random, kept in memory for one minute and then thrown away with the hashes,
    so no hash can be reversed or linked across minutes.  Do Not Track / GPC: not counted."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.minute = -1
        self.salt = b""
        self.current: dict[int, set[bytes]] = {}
        self.previous: dict[int, int] = {}

    def _roll(self) -> None:
        minute = int(self.clock() // 60)
        if minute != self.minute:
            follows = minute == self.minute + 1
            self.previous = {e: len(keys) for e, keys in self.current.items()} if follows else {}
            self.current = {}
            self.minute = minute
            self.salt = os.urandom(16)

    def seen(self, episode_id: int, material: str) -> None:
        self._roll()
        key = hashlib.blake2b(material.encode(), key=self.salt, digest_size=8).digest()
        self.current.setdefault(episode_id, set()).add(key)

    def last_minute(self) -> dict[int, int]:
        """Distinct pollers per episode in the last complete minute."""
        self._roll()
        return dict(self.previous)

    def total(self) -> int:
        return sum(self.last_minute().values())


class Cors:
    """Players on other origins: ``hls.cors_origins`` lists them (``*``: any)."""

    EXPOSE = "Content-Length, Content-Range, ETag, Age, Date"

    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.rstrip("/") for o in origins if o != "*")

    @property
    def enabled(self) -> bool:
        return self.any or bool(self.origins)

    def allowed(self, origin: str) -> str | None:
        """The Access-Control-Allow-Origin value for ``origin``; None when it is not allowed."""
        if self.any:
            return "*"
        return origin if origin in self.origins else None

    def decorate(self, request: web.Request, response: web.StreamResponse) -> None:
        if not self.enabled or not MEDIA_PATH.match(request.path):
            return
        if not self.any:
            # The answer depends on Origin: a shared cache keys on it.
            response.headers["Vary"] = "Origin"
        allowed = self.allowed(request.headers.get("Origin", ""))
        if allowed is not None:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Expose-Headers"] = self.EXPOSE

    async def preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin", "")
        if self.allowed(origin) is None:
            raise ApiError(403, "origin_not_allowed", "this origin is not in hls.cors_origins")
        method = request.headers.get("Access-Control-Request-Method", "GET")
        if method not in ("GET", "HEAD"):
            raise ApiError(405, "method_not_allowed", "episode media is read with GET or HEAD")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
            # Range for parts and segments; the conditional for revalidation.
            "Access-Control-Allow-Headers": "Range, If-None-Match, If-Range",
            "Access-Control-Max-Age": "600",
            "Cache-Control": "no-store",
        })


class HlsOrigin:
    """The feature object at ``app[HLS_ORIGIN]``."""

    def __init__(self, db, gate: Gate, tokens, cors: Cors, live_episodes: LiveEpisodes, *,
                 trusted_proxies: tuple[str, ...] = ()) -> None:
        self.db = db
        self.gate = gate
        self.tokens = tokens
        self.cors = cors
        self.live_episodes = live_episodes
        self.pollers = LivePollers()
        self.trusted_proxies = trusted_proxies

    async def admit(self, request: web.Request) -> MediaAccess:
        episode_id = path_id(request, "episode_id", "episode_not_found", "no such episode")
        episode, room = await self.live_episodes.get(self.db, episode_id)
        token = request.query.get("token")
        if token is not None:
            grant = self.tokens.verify(token, episode.id)
            return MediaAccess(episode, room, shared=True, token=token, expires=grant.expires)
        if Gate.open_to_all(room, Entry.REPLAY) and "Authorization" not in request.headers:
            return MediaAccess(episode, room, shared=True)
        admission = await self.gate.admit(request, room, Entry.REPLAY)
        subject = admission.identity.subject
        if Gate.open_to_all(room, Entry.REPLAY):
            return MediaAccess(episode, room, shared=True, subject=subject)
        fresh = self.tokens.mint(episode.id)
        return MediaAccess(episode, room, shared=False, token=fresh, expires=expiry(fresh), subject=subject)

    def listed(self, episode: Episode, room: RoomRecord) -> dict:
        """An episode's summary for a viewer the gate admitted; a live one names its LL-HLS
        playlist, with a URL token where the room is gated (the page renews it by listing again)."""
        summary = episode.summary()
        if episode.status == "live":
            url = f"/episodes/{episode.id}/live.m3u8"
            if not Gate.open_to_all(room, Entry.REPLAY):
                token = self.tokens.mint(episode.id)
                url += f"?token={token}"
                summary["token_expires"] = expiry(token)
            summary["live_playlist"] = url
        return summary

    def poll(self, request: web.Request, access: MediaAccess) -> None:
        """Counts a live playlist poll (one distinct poller per minute per key)."""
        headers = request.headers
        if opted_out(headers):
            return
        who = access.subject or request.cookies.get(ANON_COOKIE, "")
        region = client_region(request, self.trusted_proxies)
        self.pollers.seen(access.episode.id, "\x00".join((region, headers.get("User-Agent", ""), who)))
        # The audience analytics count the same poller as a live viewer over HLS.
        audience(request.app).hls_poll(request, access.room.id, access.episode.id, who)
