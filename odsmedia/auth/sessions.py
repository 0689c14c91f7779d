"""Browser sessions: an opaque cookie, stored hashed, with idle and absolute expiry.

The cookie value is 32 random bytes (url-safe base64); the database keeps
only its SHA-256.  A session is live while it is not revoked, younger than
its absolute expiry, and seen within the idle window.  ``last_seen_at`` is
refreshed at most once a minute so that a busy client does not write on
every request.

CSRF: the double-submit value is an HMAC of the session cookie under the
server's secret, so it cannot be forged without the cookie and needs no
storage.  It is handed to scripts in a readable cookie and in /api/me.

``SessionCache`` lets a node reuse a looked-up session for a few seconds
(``auth.session_cache_ttl``) so a join costs one query less; sign-out,
revocation and name changes drop entries at once on every node (bus channel
``auth:sessions``).  Only live sessions are cached, never misses, so
garbage cookies cannot fill it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg

COOKIE = "ods_session"
CSRF_COOKIE = "ods_csrf"
CSRF_HEADER = "X-CSRF-Token"
TOUCH_INTERVAL = 60.0


@dataclass(frozen=True)
class Session:
    id: int
    account_id: int
    display_name: str
    created_at: datetime
    expires_at: datetime


def _bytes(text: str) -> bytes:
    # Cookie and header values that were not UTF-8 arrive as surrogate escapes: they
    # hash and compare to something that matches nothing, instead of raising.
    return text.encode("utf-8", "surrogatepass")


def digest(token: str) -> bytes:
    return hashlib.sha256(_bytes(token)).digest()


def csrf_token(secret: str, session_token: str) -> str:
    mac = hmac.new(secret.encode(), b"csrf:" + _bytes(session_token), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:24]).decode()


def csrf_valid(secret: str, session_token: str, presented: str) -> bool:
    return hmac.compare_digest(csrf_token(secret, session_token).encode(), _bytes(presented))


async def create(
    conn: asyncpg.Pool | asyncpg.Connection, account_id: int, *, absolute_seconds: float, region: str
) -> tuple[str, int]:
    """A new session; returns (cookie value, session id)."""
    token = secrets.token_urlsafe(32)
    expires = datetime.now(timezone.utc) + timedelta(seconds=absolute_seconds)
    session_id = await conn.fetchval(
        """INSERT INTO sessions (token_hash, account_id, expires_at, region)
           VALUES ($1, $2, $3, $4) RETURNING id""",
        digest(token), account_id, expires, region,
    )
    return token, session_id


async def resolve(db: asyncpg.Pool | asyncpg.Connection, token: str, *, idle_seconds: float) -> Session | None:
    if not token or len(token) > 100:
        return None
    row = await db.fetchrow(
        """SELECT s.id, s.account_id, s.created_at, s.expires_at,
                  s.last_seen_at < now() - make_interval(secs => $3) AS stale, a.display_name
           FROM sessions s JOIN accounts a ON a.id = s.account_id
           WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()
             AND s.last_seen_at > now() - make_interval(secs => $2)""",
        digest(token), idle_seconds, TOUCH_INTERVAL,
    )
    if row is None:
        return None
    if row["stale"]:
        await db.execute("UPDATE sessions SET last_seen_at = now() WHERE id = $1", row["id"])
    return Session(row["id"], row["account_id"], row["display_name"], row["created_at"], row["expires_at"])


async def revoke(db: asyncpg.Pool | asyncpg.Connection, session_id: int, *, account_id: int) -> bool:
    status = await db.execute(
        "UPDATE sessions SET revoked_at = now() WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL",
        session_id, account_id,
    )
    return status.endswith(" 1")


async def list_for(db: asyncpg.Pool | asyncpg.Connection, account_id: int, *, idle_seconds: float) -> list[dict]:
    rows = await db.fetch(
        """SELECT id, created_at, last_seen_at, expires_at, region FROM sessions
           WHERE account_id = $1 AND revoked_at IS NULL AND expires_at > now()
             AND last_seen_at > now() - make_interval(secs => $2)
           ORDER BY last_seen_at DESC""",
        account_id, idle_seconds,
    )
    return [
        {"id": r["id"], "created_at": r["created_at"].isoformat(), "last_seen_at": r["last_seen_at"].isoformat(),
         "expires_at": r["expires_at"].isoformat(), "region": r["region"]}
        for r in rows
    ]


class SessionCache:
    MAX_ENTRIES = 100_000

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[bytes, tuple[float, Session]] = {}

    def get(self, token: str) -> Session | None:
        if self.ttl <= 0:
            return None
        key = digest(token)
        hit = self._entries.get(key)
        if hit is None:
            return None
        stored_at, found = hit
        if time.monotonic() - stored_at >= self.ttl or found.expires_at <= datetime.now(timezone.utc):
            self._entries.pop(key, None)
            return None
        return found

    def put(self, token: str, found: Session) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            cutoff = time.monotonic() - self.ttl
            self._entries = {k: v for k, v in self._entries.items() if v[0] > cutoff}
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
        self._entries[digest(token)] = (time.monotonic(), found)

    def forget(self, *, session_ids: list[int] = (), account_ids: list[int] = ()) -> None:
        ids, accounts = set(session_ids), set(account_ids)
        if not ids and not accounts:
            return
        self._entries = {k: v for k, v in self._entries.items()
                         if v[1].id not in ids and v[1].account_id not in accounts}


async def export(db: asyncpg.Pool | asyncpg.Connection, account_id: int) -> list[dict]:
    return [dict(r) for r in await db.fetch(
        "SELECT id, created_at, last_seen_at, expires_at, revoked_at, region FROM sessions "
        "WHERE account_id = $1 ORDER BY created_at", account_id)]


async def expire(db: asyncpg.Pool | asyncpg.Connection) -> int:
    """Retention: sessions expired a day ago or revoked a week ago go; returns how many."""
    status = await db.execute(
        "DELETE FROM sessions WHERE expires_at < now() - interval '1 day' OR revoked_at < now() - interval '7 days'")
    return int(status.split()[-1])
