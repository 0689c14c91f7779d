"""Bearer API tokens scoped to one room and one role.

A token is ``ods_`` + 43 characters of url-safe base64 (32 random bytes).
Only its SHA-256 is stored; lookups are by hash, so comparing is a B-tree
probe on a digest rather than a string comparison an attacker can time.
This module owns the ``api_tokens`` table; the gate reaches it through
``GateTokens`` (its ``TokenResolver``), wired by ``make_app``.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone

import asyncpg

from ..gate import TokenGrant

PREFIX = "ods_"
ROLES = ("host", "moderator", "viewer")


def digest(token: str) -> bytes:
    # surrogatepass: an Authorization header that was not UTF-8 hashes to no token, never raises.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


async def mint(
    db: asyncpg.Pool | asyncpg.Connection,
    *,
    room_id: int,
    role: str,
    ttl_seconds: float,
    account_id: int | None = None,
    label: str = "",
) -> tuple[str, int]:
    """Create a token; returns (token, id). The token is not recoverable later."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if ttl_seconds <= 0:
        raise ValueError("ttl must be positive")
    token = PREFIX + secrets.token_urlsafe(32)
    expires = datetime.now(timezone.utc) + timedelta(seconds=ttl_seconds)
    token_id = await db.fetchval(
        """INSERT INTO api_tokens (token_hash, account_id, room_id, role, label, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        digest(token), account_id, room_id, role, label, expires,
    )
    return token, token_id


async def resolve(db: asyncpg.Pool | asyncpg.Connection, token: str) -> TokenGrant | None:
    """The grant behind a live token, or None (unknown, expired or revoked)."""
    if not token.startswith(PREFIX) or len(token) > 100:
        return None
    row = await db.fetchrow(
        """SELECT id, room_id, role, account_id, expires_at,
                  last_used_at IS NULL OR last_used_at < now() - interval '60 seconds' AS stale
           FROM api_tokens
           WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()""",
        digest(token),
    )
    if row is None:
        return None
    if row["stale"]:
        # At most one write a minute per token: a viewer token shared by many players
        # would otherwise serialize every join on this row's lock.
        await db.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = $1", row["id"])
    return TokenGrant(row["id"], row["room_id"], row["role"], row["account_id"], row["expires_at"])


async def grant(db: asyncpg.Pool | asyncpg.Connection, token_id: int) -> TokenGrant | None:
    """The grant a token was minted with, whether or not it is still live."""
    row = await db.fetchrow("SELECT id, room_id, role, account_id, expires_at FROM api_tokens WHERE id = $1",
                            token_id)
    if row is None:
        return None
    return TokenGrant(row["id"], row["room_id"], row["role"], row["account_id"], row["expires_at"])


class GateTokens:
    """The gate's ``TokenResolver`` over this table."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self.db = db

    async def resolve(self, token: str) -> TokenGrant | None:
        return await resolve(self.db, token)

    async def grant(self, token_id: int) -> TokenGrant | None:
        return await grant(self.db, token_id)


async def revoke(db: asyncpg.Pool | asyncpg.Connection, token_id: int, *, account_id: int | None) -> bool:
    status = await db.execute(
        """UPDATE api_tokens SET revoked_at = now()
           WHERE id = $1 AND revoked_at IS NULL AND account_id IS NOT DISTINCT FROM $2""",
        token_id, account_id,
    )
    return status.endswith(" 1")


async def list_for(db: asyncpg.Pool | asyncpg.Connection, account_id: int, *, limit: int = 200) -> list[dict]:
    """The owner's tokens, newest first, live and dead (the token itself is never shown again)."""
    rows = await db.fetch(
        """SELECT t.id, r.slug, t.role, t.label, t.created_at, t.expires_at, t.last_used_at, t.revoked_at,
                  (t.revoked_at IS NULL AND t.expires_at > now()) AS active
           FROM api_tokens t JOIN rooms r ON r.id = t.room_id
           WHERE t.account_id = $1 ORDER BY t.created_at DESC, t.id DESC LIMIT $2""",
        account_id, limit,
    )

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return [
        {"id": r["id"], "room": r["slug"], "role": r["role"], "label": r["label"],
         "created_at": iso(r["created_at"]), "expires_at": iso(r["expires_at"]),
         "last_used_at": iso(r["last_used_at"]), "revoked_at": iso(r["revoked_at"]), "active": r["active"]}
        for r in rows
    ]


async def export(db: asyncpg.Pool | asyncpg.Connection, account_id: int) -> list[dict]:
    return [dict(r) for r in await db.fetch(
        "SELECT t.id, r.slug AS room, t.role, t.label, t.created_at, t.expires_at, t.revoked_at, "
        "t.last_used_at FROM api_tokens t JOIN rooms r ON r.id = t.room_id "
        "WHERE t.account_id = $1 ORDER BY t.created_at", account_id)]


async def expire(db: asyncpg.Pool | asyncpg.Connection) -> int:
    """Retention: tokens expired or revoked a week ago go; returns how many."""
    status = await db.execute(
        "DELETE FROM api_tokens WHERE expires_at < now() - interval '7 days' OR revoked_at < now() - interval '7 days'")
    return int(status.split()[-1])
