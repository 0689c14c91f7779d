"""The operator role: sees every room's analytics and deletes accounts on request.

Granted from the command line only (``odsmedia operator grant EMAIL``): no
page can make an operator, so a stolen session cannot promote itself.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from ..errors import ApiError
from ..gate import Identity
from ..keys import DB, GATE


class NoSuchAccount(LookupError):
    pass


async def grant(db: asyncpg.Pool, email: str, *, by: str = "cli") -> int:
    account_id = await db.fetchval("SELECT id FROM accounts WHERE email = $1", email.strip().lower())
    if account_id is None:
        raise NoSuchAccount(email)
    await db.execute("INSERT INTO operators (account_id, granted_by) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                     account_id, by)
    return account_id


async def revoke(db: asyncpg.Pool, email: str) -> bool:
    status = await db.execute(
        "DELETE FROM operators WHERE account_id = (SELECT id FROM accounts WHERE email = $1)", email.strip().lower())
    return status.split()[-1] != "0"


async def is_operator(db: asyncpg.Pool, account_id: int | None) -> bool:
    if account_id is None:
        return False
    return bool(await db.fetchval("SELECT 1 FROM operators WHERE account_id = $1", account_id))


async def export(conn: asyncpg.Connection, account_id: int) -> dict | None:
    """The account's operator role, if it has one (for the data export)."""
    row = await conn.fetchrow("SELECT granted_at, granted_by FROM operators WHERE account_id = $1", account_id)
    return dict(row) if row else None


async def require_operator(request: web.Request) -> Identity:
    identity = await request.app[GATE].identify(request)
    if identity.account_id is None or identity.token is not None:
        raise ApiError(401, "not_signed_in", "sign in with an operator account")
    if not await is_operator(request.app[DB], identity.account_id):
        raise ApiError(403, "not_an_operator", "this page is for the service's operators")
    return identity
