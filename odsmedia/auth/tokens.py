"""Bearer API tokens scoped to one room and one role.

A token is ``ods_`` + 43 characters of url-safe base64 (32 random bytes).
Only its SHA-256 is stored; lookups are by hash, so comparing is a B-tree
probe on a digest rather than a string comparison an attacker can time.
This module owns the ``api_tokens`` table; the gate reaches it through
``GateTokens`` (its ``TokenResolver``), wired by ``make_app``.

Co-host invitations are rows of the same table with ``purpose =
'invitation'``: minted, hashed, expired and revoked like every token, but
never admitted by the gate; ``accept`` exchanges one, once, for a host token
of its room whose ``parent_id`` is the invitation.  Revoking a token revokes
every token that came from it (an invitation and the co-host it admitted).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone

import asyncpg

from ..gate import TokenGrant
from ..storage import transaction

PREFIX = "ods_"
ROLES = ("host", "moderator", "viewer")
PURPOSES = ("access", "invitation")


class InvitationError(Exception):
    """An invitation that cannot be accepted; ``reason`` is the API's error code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
    purpose: str = "access",
    parent_id: int | None = None,
) -> tuple[str, int]:
    """Create a token; returns (token, id). The token is not recoverable later.

    A token made from another (``parent_id``) expires no later than it: nothing outlives
    its source, so retention, deleting an expired parent, takes no live child with it."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}")
    if ttl_seconds <= 0:
        raise ValueError("ttl must be positive")
    token = PREFIX + secrets.token_urlsafe(32)
    expires = datetime.now(timezone.utc) + timedelta(seconds=ttl_seconds)
    token_id = await db.fetchval(
        """INSERT INTO api_tokens (token_hash, account_id, room_id, role, label, expires_at, purpose, parent_id)
           VALUES ($1, $2, $3, $4, $5,
                   LEAST($6, (SELECT p.expires_at FROM api_tokens p WHERE p.id = $8)), $7, $8)
           RETURNING id""",
        digest(token), account_id, room_id, role, label, expires, purpose, parent_id,
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
           WHERE token_hash = $1 AND purpose = 'access' AND revoked_at IS NULL AND expires_at > now()""",
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
    row = await db.fetchrow("SELECT id, room_id, role, account_id, expires_at FROM api_tokens "
                            "WHERE id = $1 AND purpose = 'access'", token_id)
    if row is None:
        return None
    return TokenGrant(row["id"], row["room_id"], row["role"], row["account_id"], row["expires_at"])


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class GateTokens:
    """The gate's ``TokenResolver`` over this table."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self.db = db

    async def resolve(self, token: str) -> TokenGrant | None:
        return await resolve(self.db, token)

    async def grant(self, token_id: int) -> TokenGrant | None:
        return await grant(self.db, token_id)


# Every live token that came from the root (its invitations, their co-hosts, ...), the root included.
_REVOKE_TREE = """
    WITH RECURSIVE tree(id) AS (
        SELECT $1::bigint
        UNION SELECT t.id FROM api_tokens t JOIN tree ON t.parent_id = tree.id)
    UPDATE api_tokens SET revoked_at = now()
    WHERE id IN (SELECT id FROM tree) AND revoked_at IS NULL"""


async def revoke(db: asyncpg.Pool | asyncpg.Connection, token_id: int, *, account_id: int | None) -> bool:
    """Revoke the caller's own live token and everything it gave (invitations, co-hosts)."""
    async with transaction(db) as conn:
        owned = await conn.fetchval(
            """SELECT true FROM api_tokens WHERE id = $1 AND revoked_at IS NULL
               AND account_id IS NOT DISTINCT FROM $2 FOR UPDATE""", token_id, account_id)
        if not owned:
            return False
        await conn.execute(_REVOKE_TREE, token_id)
        return True


# ---- co-host invitations ---------------------------------------------------------------------

async def invite(db: asyncpg.Pool | asyncpg.Connection, *, room_id: int, ttl_seconds: float,
                 account_id: int | None, parent_id: int | None, label: str = "") -> tuple[str, int]:
    """An invitation to co-host the room: shown once, exchanged once (``accept``); it expires
    no later than the inviter's token."""
    return await mint(db, room_id=room_id, role="host", ttl_seconds=ttl_seconds, account_id=account_id,
                      label=label, purpose="invitation", parent_id=parent_id)


async def accept(db: asyncpg.Pool, invitation: object, *, ttl_seconds: float, name: str) -> tuple[str, int, str]:
    """Exchange a live invitation for a host token of its room, once; returns (token, id, room slug).

    The co-host's token has no account (its subject is its own ``t:<id>``, so the
    co-host is a person apart from the inviter) and ``parent_id`` = the invitation:
    revoking the invitation revokes the co-host.  Raises ``InvitationError``
    (``invalid_invitation``, ``invitation_used``, ``invitation_expired``,
    ``invitation_revoked``); then nothing is written."""
    if not isinstance(invitation, str) or not invitation.startswith(PREFIX) or len(invitation) > 100:
        raise InvitationError("invalid_invitation")
    async with transaction(db) as conn:
        # One conditional UPDATE: two racing accepts cannot both win.
        row = await conn.fetchrow(
            """UPDATE api_tokens t SET used_at = now() FROM rooms r
               WHERE t.token_hash = $1 AND t.purpose = 'invitation' AND t.used_at IS NULL
                     AND t.revoked_at IS NULL AND t.expires_at > now() AND r.id = t.room_id
               RETURNING t.id, t.room_id, r.slug""", digest(invitation))
        if row is None:
            found = await conn.fetchrow(
                """SELECT used_at IS NOT NULL AS used, revoked_at IS NOT NULL AS revoked,
                          expires_at <= now() AS expired
                   FROM api_tokens WHERE token_hash = $1 AND purpose = 'invitation'""", digest(invitation))
            if found is None:
                raise InvitationError("invalid_invitation")
            raise InvitationError("invitation_revoked" if found["revoked"]
                                  else "invitation_used" if found["used"] else "invitation_expired")
        # The co-host's grant ends no later than the invitation (so than the inviter's token).
        token, token_id = await mint(conn, room_id=row["room_id"], role="host", ttl_seconds=ttl_seconds,
                                     label=name, parent_id=row["id"])
        return token, token_id, row["slug"]


async def invitations(db: asyncpg.Pool | asyncpg.Connection, room_id: int, *, limit: int = 100) -> list[dict]:
    """The room's invitations, newest first, with the co-host each admitted (if any)."""
    rows = await db.fetch(
        """SELECT i.id, i.label, i.created_at, i.expires_at, i.used_at, i.revoked_at,
                  c.id AS cohost_id, c.label AS cohost_name,
                  (c.revoked_at IS NULL AND c.expires_at > now()) AS cohost_active
           FROM api_tokens i
           LEFT JOIN api_tokens c ON c.parent_id = i.id AND c.purpose = 'access'
           WHERE i.room_id = $1 AND i.purpose = 'invitation'
           ORDER BY i.created_at DESC, i.id DESC LIMIT $2""", room_id, limit)

    def status(r: asyncpg.Record) -> str:
        if r["revoked_at"] is not None:
            return "revoked"
        if r["used_at"] is not None:
            return "accepted"
        return "expired" if r["expires_at"] <= datetime.now(timezone.utc) else "open"

    return [
        {"id": r["id"], "label": r["label"], "status": status(r), "created_at": _iso(r["created_at"]),
         "expires_at": _iso(r["expires_at"]), "used_at": _iso(r["used_at"]), "revoked_at": _iso(r["revoked_at"]),
         "cohost": None if r["cohost_id"] is None else
         {"subject": f"t:{r['cohost_id']}", "name": r["cohost_name"], "active": r["cohost_active"]}}
        for r in rows
    ]


async def revoke_invitation(db: asyncpg.Pool, room_id: int, invitation_id: int) -> bool:
    """Revoke one of the room's invitations and the co-host it admitted; False if none is live."""
    async with transaction(db) as conn:
        live = await conn.fetchval(
            """SELECT true FROM api_tokens WHERE id = $1 AND room_id = $2 AND purpose = 'invitation'
               AND revoked_at IS NULL FOR UPDATE""", invitation_id, room_id)
        if not live:
            return False
        await conn.execute(_REVOKE_TREE, invitation_id)
        return True


async def list_for(db: asyncpg.Pool | asyncpg.Connection, account_id: int, *, limit: int = 200) -> list[dict]:
    """The owner's tokens, newest first, live and dead (the token itself is never shown again)."""
    rows = await db.fetch(
        """SELECT t.id, r.slug, t.role, t.purpose, t.label, t.created_at, t.expires_at, t.last_used_at, t.revoked_at,
                  (t.revoked_at IS NULL AND t.expires_at > now()) AS active
           FROM api_tokens t JOIN rooms r ON r.id = t.room_id
           WHERE t.account_id = $1 ORDER BY t.created_at DESC, t.id DESC LIMIT $2""",
        account_id, limit,
    )

    return [
        {"id": r["id"], "room": r["slug"], "role": r["role"], "purpose": r["purpose"], "label": r["label"],
         "created_at": _iso(r["created_at"]), "expires_at": _iso(r["expires_at"]),
         "last_used_at": _iso(r["last_used_at"]), "revoked_at": _iso(r["revoked_at"]), "active": r["active"]}
        for r in rows
    ]


async def export(db: asyncpg.Pool | asyncpg.Connection, account_id: int) -> list[dict]:
    return [dict(r) for r in await db.fetch(
        "SELECT t.id, r.slug AS room, t.role, t.purpose, t.label, t.created_at, t.expires_at, t.revoked_at, "
        "t.last_used_at FROM api_tokens t JOIN rooms r ON r.id = t.room_id "
        "WHERE t.account_id = $1 ORDER BY t.created_at", account_id)]


async def expire(db: asyncpg.Pool | asyncpg.Connection) -> int:
    """Retention: tokens expired or revoked a week ago go; returns how many."""
    status = await db.execute(
        "DELETE FROM api_tokens WHERE expires_at < now() - interval '7 days' OR revoked_at < now() - interval '7 days'")
    return int(status.split()[-1])
