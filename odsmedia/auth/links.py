"""Magic links: single use, short-lived, stored as a selector plus a verifier hash.

The token handed out is ``<selector>.<verifier>`` (16 + 32 random bytes,
url-safe base64).  The selector finds the row; the verifier's SHA-256 is
compared with ``hmac.compare_digest`` so a wrong verifier takes the same
time however many bytes match.  Redemption is one conditional UPDATE, so two
clicks racing on one link cannot both succeed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg

SELECTOR_BYTES = 16
VERIFIER_BYTES = 32


class LinkError(Exception):
    """A link that cannot sign anyone in; ``reason`` is the API reason code."""

    def __init__(self, reason: str, email: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.email = email


@dataclass(frozen=True)
class PendingLink:
    id: int
    email: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def split(token: str) -> tuple[bytes, bytes]:
    """(selector, verifier) or LinkError("invalid_link")."""
    if not isinstance(token, str) or len(token) > 128 or token.count(".") != 1:
        raise LinkError("invalid_link")
    sel, _, ver = token.partition(".")
    try:
        selector, verifier = _unb64(sel), _unb64(ver)
    except (binascii.Error, ValueError):
        raise LinkError("invalid_link") from None
    if len(selector) != SELECTOR_BYTES or len(verifier) != VERIFIER_BYTES:
        raise LinkError("invalid_link")
    return selector, verifier


async def create(db: asyncpg.Pool | asyncpg.Connection, email: str, ttl_seconds: float) -> str:
    selector = secrets.token_bytes(SELECTOR_BYTES)
    verifier = secrets.token_bytes(VERIFIER_BYTES)
    expires = datetime.now(timezone.utc) + timedelta(seconds=ttl_seconds)
    await db.execute(
        "INSERT INTO magic_links (selector, verifier_hash, email, expires_at) VALUES ($1, $2, $3, $4)",
        selector, hashlib.sha256(verifier).digest(), email, expires,
    )
    return f"{_b64(selector)}.{_b64(verifier)}"


async def check(conn: asyncpg.Connection, token: str) -> PendingLink:
    """The live link behind ``token`` (not consumed), or LinkError with invalid_link/link_used/link_expired."""
    selector, verifier = split(token)
    row = await conn.fetchrow(
        "SELECT id, verifier_hash, email, expires_at, used_at, now() AS now FROM magic_links WHERE selector = $1",
        selector,
    )
    if row is None or not hmac.compare_digest(row["verifier_hash"], hashlib.sha256(verifier).digest()):
        raise LinkError("invalid_link")
    if row["used_at"] is not None:
        raise LinkError("link_used", row["email"])
    if row["expires_at"] <= row["now"]:
        raise LinkError("link_expired", row["email"])
    return PendingLink(row["id"], row["email"])


async def consume(conn: asyncpg.Connection, link: PendingLink) -> None:
    """Marks the link used; LinkError("link_used") if another request got there first."""
    status = await conn.execute(
        "UPDATE magic_links SET used_at = now() WHERE id = $1 AND used_at IS NULL AND expires_at > now()",
        link.id,
    )
    if not status.endswith(" 1"):
        raise LinkError("link_used", link.email)


async def forget(conn: asyncpg.Connection, email: str) -> None:
    """Account deletion: pending sign-in links for the address go."""
    await conn.execute("DELETE FROM magic_links WHERE email = $1", email)


async def expire(db: asyncpg.Pool | asyncpg.Connection) -> int:
    """Retention: links expired a day ago go (used ones expire too); returns how many."""
    return int((await db.execute("DELETE FROM magic_links WHERE expires_at < now() - interval '1 day'")).split()[-1])
