"""Who is a unique viewer today, without cookies and without addresses.

A visitor is ``hash(day's secret salt, room, region, browser family, subject)``,
the way cookieless analytics count: the salt is random, one per UTC day,
shared by every node through Postgres and deleted when the day is over, so a
hash can neither be reversed nor linked to the same person's hash on another
day.  The subject is the anonymous-viewer or account id the gate already
knows (never a new identifier); the region comes from the address, which is
dropped.  A Do Not Track or Global Privacy Control header keeps a person out
of analytics altogether.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date
from functools import lru_cache

import asyncpg
from aiohttp import web

from ..privacy.region import client_region
from . import store
from .sink import opted_out

VISITOR_BYTES = 16

_BOT = re.compile(r"bot|crawl|spider|slurp|headless|preview|monitor|curl|wget|python|go-http", re.I)
# Order matters: Edge and Opera also say Chrome, Chrome also says Safari.
_FAMILIES = (
    ("edge", re.compile(r"\bEdg(e|A|iOS)?/")),
    ("opera", re.compile(r"\bOPR/|\bOpera\b")),
    ("samsung", re.compile(r"SamsungBrowser/")),
    ("firefox", re.compile(r"\bFirefox/|\bFxiOS/")),
    ("chrome", re.compile(r"\bChrom(e|ium)/|\bCriOS/")),
    ("safari", re.compile(r"\bSafari/")),
)


@lru_cache(maxsize=2048)
def browser_family(user_agent: str) -> str:
    """A coarse family such as ``chrome-mobile``; ``bot`` for crawlers and scripts.

    Cached: a handful of user-agent strings make most traffic, and the regexes cost
    ~100 us a string."""
    if not user_agent or _BOT.search(user_agent):
        return "bot"
    family = next((name for name, pattern in _FAMILIES if pattern.search(user_agent)), "other")
    return family + ("-mobile" if "Mobi" in user_agent or "Android" in user_agent else "")


def counted(headers) -> bool:
    """Whether a request is counted at all: not opted out, not a bot (for counts without a visitor)."""
    return not opted_out(headers) and browser_family(headers.get("User-Agent", "")) != "bot"


def visitor_hash(salt: bytes, room_id: int, region: str, family: str, subject: str) -> bytes:
    """The room is part of the hash too: even within a day, one person's visits to two rooms do not link."""
    material = b"\x00".join((salt, str(room_id).encode(), region.encode(), family.encode(), subject.encode()))
    return hashlib.sha256(material).digest()[:VISITOR_BYTES]


class Salts:
    """Today's salt, created by whichever node asks first, cached per day."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self.db = db
        self._day: date | None = None
        self._salt = b""

    async def for_day(self, day: date) -> bytes:
        if day == self._day:
            return self._salt
        salt = await store.salt_for_day(self.db, day)
        self._day, self._salt = day, salt
        return salt


class Viewer:
    """The request facts a visitor hash needs, taken once; the request (and its address) is not kept."""

    __slots__ = ("region", "family", "subject")

    def __init__(self, region: str, family: str, subject: str) -> None:
        self.region = region
        self.family = family
        self.subject = subject

    @classmethod
    def of(cls, request: web.Request, subject: str, trusted_proxies: tuple[str, ...] = ()) -> "Viewer | None":
        """None when the person opted out or the client is a bot."""
        if opted_out(request.headers):
            return None
        family = browser_family(request.headers.get("User-Agent", ""))
        if family == "bot":
            return None
        return cls(client_region(request, trusted_proxies), family, subject)

    def key(self, salt: bytes, room_id: int) -> bytes:
        return visitor_hash(salt, room_id, self.region, self.family, self.subject)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Viewer) and (self.region, self.family, self.subject) == (
            other.region, other.family, other.subject)

    def __hash__(self) -> int:
        return hash((self.region, self.family, self.subject))
