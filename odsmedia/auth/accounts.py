"""Accounts: looked up and created by e-mail address, display names."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .. import names
from ..errors import ApiError
from ..gate import Admission
from ..wire import clean_name

# Deliberately loose: the real check is that the link arrives.
_EMAIL = re.compile(r"^[^@\s<>\"',;]{1,64}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")
MAX_NAME = 80


@dataclass(frozen=True)
class Account:
    id: int
    email: str
    display_name: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> "Account":
        return cls(row["id"], row["email"], row["display_name"], row["created_at"])

    def public(self) -> dict:
        return {
            "id": self.id,
            "subject": f"a:{self.id}",
            "email": self.email,
            "display_name": self.display_name,
            "created_at": self.created_at.isoformat(),
        }


def normalize_email(raw: object) -> str:
    """Lower-cased address, or ApiError 400 invalid_email."""
    if not isinstance(raw, str):
        raise ApiError(400, "invalid_email", "email must be a string")
    email = raw.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email) or any(unicodedata.category(c) == "Cc" for c in email):
        raise ApiError(400, "invalid_email", "that does not look like an e-mail address")
    return email


def clean_display_name(raw: object) -> str:
    """An account's display name under the one rule (``odsmedia.names``), or 400."""
    try:
        return names.display_name(raw, max_length=MAX_NAME)
    except names.InvalidName as exc:
        raise ApiError(400, "invalid_display_name", str(exc)) from None


async def by_email(db: asyncpg.Pool | asyncpg.Connection, email: str) -> Account | None:
    row = await db.fetchrow("SELECT * FROM accounts WHERE email = $1", email)
    return Account.from_row(row) if row else None


async def get(db: asyncpg.Pool | asyncpg.Connection, account_id: int) -> Account | None:
    row = await db.fetchrow("SELECT * FROM accounts WHERE id = $1", account_id)
    return Account.from_row(row) if row else None


async def create_verified(conn: asyncpg.Connection, email: str) -> Account:
    """Create (or find, if a concurrent sign-in won) a verified, age-confirmed account."""
    row = await conn.fetchrow(
        """INSERT INTO accounts (email, display_name, email_verified_at, age_confirmed_at)
           VALUES ($1, $2, now(), now())
           ON CONFLICT (email) DO NOTHING RETURNING *""",
        email, names.scrub(email.partition("@")[0])[:MAX_NAME] or "user",
    )
    if row is None:
        row = await conn.fetchrow("SELECT * FROM accounts WHERE email = $1", email)
    return Account.from_row(row)


async def age_status(db: asyncpg.Pool | asyncpg.Connection, email: str) -> asyncpg.Record | None:
    """``id`` and ``aged`` (the 16+ confirmation was given) of the account with this address."""
    return await db.fetchrow("SELECT id, age_confirmed_at IS NOT NULL AS aged FROM accounts WHERE email = $1", email)


async def confirm(db: asyncpg.Pool | asyncpg.Connection, account_id: int, *, age_confirmed: bool = False) -> Account:
    """A sign-in link was used: the address is verified (and, when asked, the age confirmed now)."""
    if age_confirmed:
        await db.execute(
            """UPDATE accounts SET age_confirmed_at = now(),
                      email_verified_at = coalesce(email_verified_at, now()) WHERE id = $1""", account_id)
    else:
        await db.execute(
            "UPDATE accounts SET email_verified_at = coalesce(email_verified_at, now()) WHERE id = $1", account_id)
    return await get(db, account_id)


async def set_display_name(db: asyncpg.Pool | asyncpg.Connection, account_id: int, name: str) -> Account:
    row = await db.fetchrow("UPDATE accounts SET display_name = $2 WHERE id = $1 RETURNING *", account_id, name)
    if row is None:
        raise ApiError(404, "account_not_found", "this account no longer exists")
    return Account.from_row(row)


async def display_name(db: asyncpg.Pool | asyncpg.Connection, account_id: int) -> str | None:
    return await db.fetchval("SELECT display_name FROM accounts WHERE id = $1", account_id)


async def email_of(db: asyncpg.Pool | asyncpg.Connection, account_id: int) -> str | None:
    return await db.fetchval("SELECT email FROM accounts WHERE id = $1", account_id)


async def ids_of_emails(db: asyncpg.Pool | asyncpg.Connection, emails: list[str]) -> list[int]:
    return [r["id"] for r in await db.fetch("SELECT id FROM accounts WHERE email = ANY($1::text[])", emails)]


async def export(db: asyncpg.Pool | asyncpg.Connection, account_id: int) -> dict | None:
    """The account row as the privacy export shows it (None: no such account)."""
    row = await db.fetchrow(
        "SELECT id, email, display_name, email_verified_at, age_confirmed_at, created_at "
        "FROM accounts WHERE id = $1", account_id)
    return dict(row) if row is not None else None


async def lock_for_deletion(conn: asyncpg.Connection, account_id: int) -> str | None:
    """Lock the account row in the caller's transaction; its e-mail, or None when gone."""
    return await conn.fetchval("SELECT email FROM accounts WHERE id = $1 FOR UPDATE", account_id)


async def delete(conn: asyncpg.Connection, account_id: int) -> None:
    """Delete the account; the schema cascades sessions, session events, API tokens,
    room roles and the billing customer mapping."""
    await conn.execute("DELETE FROM accounts WHERE id = $1", account_id)


def fallback_name(admission: Admission) -> str:
    """The name of an identity with none of its own: the role a bare token grants, or an
    anonymous id's tail (stable for that browser)."""
    if admission.identity.kind == "token":
        return admission.role.capitalize()
    return "guest-" + admission.identity.subject.rsplit(":", 1)[-1][-6:]


async def shown_name(db: asyncpg.Pool | asyncpg.Connection, admission: Admission, supplied: Any) -> str:
    """The one display name an identity shows in a room, for signaling and chat alike (so a
    person is never `Viewer 2089` in the people list and `guest-mOPaCH` in chat): the
    session's name, the account's, the name the page supplied (checked by odsmedia.wire),
    then ``fallback_name``."""
    identity = admission.identity
    if identity.display_name:
        return identity.display_name
    if identity.account_id is not None:
        name = await display_name(db, identity.account_id)
        if name:
            return name
    return clean_name(supplied) or fallback_name(admission)
