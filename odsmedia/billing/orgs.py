"""Enterprise organizations: members by e-mail, one seat each, seats = subscription quantity."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ..errors import ApiError

# Statuses under which a subscription's quantity still counts as seats.
SEATED = ("active", "trialing", "past_due")


@dataclass(frozen=True)
class Org:
    id: int
    name: str


def clean_name(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip() or len(raw.strip()) > 120:
        raise ApiError(400, "invalid_org_name", "name must be 1-120 characters")
    if any(ord(ch) < 32 for ch in raw):
        raise ApiError(400, "invalid_org_name", "name must not contain control characters")
    return raw.strip()


async def create(db: asyncpg.Pool, name: str, *, admin_id: int, admin_email: str) -> Org:
    async with db.acquire() as conn:
        async with conn.transaction():
            org_id = await conn.fetchval(
                "INSERT INTO organizations (name, created_by) VALUES ($1, $2) RETURNING id", name, admin_id)
            await conn.execute(
                "INSERT INTO org_members (org_id, email, role) VALUES ($1, $2, 'admin')", org_id, admin_email)
    return Org(org_id, name)


async def role_of(db: asyncpg.Pool | asyncpg.Connection, org_id: int, email: str) -> str | None:
    return await db.fetchval("SELECT role FROM org_members WHERE org_id = $1 AND email = $2", org_id, email)


async def require_admin(db: asyncpg.Pool | asyncpg.Connection, org_id: int, email: str) -> Org:
    row = await db.fetchrow(
        """SELECT o.id, o.name, m.role FROM organizations o
           LEFT JOIN org_members m ON m.org_id = o.id AND m.email = $2 WHERE o.id = $1""",
        org_id, email,
    )
    if row is None or row["role"] is None:
        raise ApiError(404, "org_not_found", "no such organization of yours")
    if row["role"] != "admin":
        raise ApiError(403, "not_org_admin", "only an organization admin may do this")
    return Org(row["id"], row["name"])


async def seats(db: asyncpg.Pool | asyncpg.Connection, org_id: int) -> int:
    return await db.fetchval(
        """SELECT coalesce(max(s.quantity), 0) FROM billing_customers c
           JOIN subscriptions s ON s.customer_id = c.customer_id
           WHERE c.org_id = $1 AND s.status = ANY($2::text[])""",
        org_id, list(SEATED),
    )


async def detail(db: asyncpg.Pool, org: Org) -> dict:
    members = await db.fetch(
        """SELECT m.email, m.role, m.added_at, a.id IS NOT NULL AS has_account
           FROM org_members m LEFT JOIN accounts a ON a.email = m.email
           WHERE m.org_id = $1 ORDER BY m.role, m.email""",
        org.id,
    )
    sub = await db.fetchrow(
        """SELECT s.plan, s.status, s.quantity, s.current_period_end, s.cancel_at_period_end
           FROM billing_customers c JOIN subscriptions s ON s.customer_id = c.customer_id
           WHERE c.org_id = $1 ORDER BY s.state_at DESC LIMIT 1""",
        org.id,
    )
    return {
        "id": org.id,
        "name": org.name,
        "seats": await seats(db, org.id),
        "used": len(members),
        "subscription": None if sub is None else {
            "plan": sub["plan"], "status": sub["status"], "quantity": sub["quantity"],
            "current_period_end": sub["current_period_end"].isoformat() if sub["current_period_end"] else None,
            "cancel_at_period_end": sub["cancel_at_period_end"],
        },
        "members": [{"email": m["email"], "role": m["role"], "has_account": m["has_account"],
                     "added_at": m["added_at"].isoformat()} for m in members],
    }


async def add_member(db: asyncpg.Pool, org_id: int, email: str, role: str = "member") -> None:
    if role not in ("admin", "member"):
        raise ApiError(400, "invalid_role", "role must be admin or member")
    async with db.acquire() as conn:
        async with conn.transaction():
            # Serializes concurrent adds to one org so two cannot both take the last seat.
            await conn.execute("SELECT 1 FROM organizations WHERE id = $1 FOR UPDATE", org_id)
            if await role_of(conn, org_id, email):
                raise ApiError(409, "already_member", f"{email} is already a member")
            used = await conn.fetchval("SELECT count(*) FROM org_members WHERE org_id = $1", org_id)
            available = await seats(conn, org_id)
            if used >= available:
                raise ApiError(409, "seats_exhausted",
                               f"all {available} seats are taken; buy more seats or remove a member",
                               seats=available, used=used)
            await conn.execute("INSERT INTO org_members (org_id, email, role) VALUES ($1, $2, $3)",
                               org_id, email, role)


async def remove_member(db: asyncpg.Pool, org_id: int, email: str) -> None:
    async with db.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM organizations WHERE id = $1 FOR UPDATE", org_id)
            role = await role_of(conn, org_id, email)
            if role is None:
                raise ApiError(404, "member_not_found", f"{email} is not a member")
            if role == "admin":
                admins = await conn.fetchval(
                    "SELECT count(*) FROM org_members WHERE org_id = $1 AND role = 'admin'", org_id)
                if admins <= 1:
                    raise ApiError(409, "last_admin", "an organization keeps at least one admin")
            await conn.execute("DELETE FROM org_members WHERE org_id = $1 AND email = $2", org_id, email)


async def of_account(db: asyncpg.Pool | asyncpg.Connection, email: str) -> list[dict]:
    rows = await db.fetch(
        """SELECT o.id, o.name, m.role FROM org_members m JOIN organizations o ON o.id = m.org_id
           WHERE m.email = $1 ORDER BY o.name""",
        email,
    )
    return [{"id": r["id"], "name": r["name"], "role": r["role"]} for r in rows]


async def export_memberships(db: asyncpg.Pool | asyncpg.Connection, email: str) -> list[dict]:
    return [dict(r) for r in await db.fetch(
        "SELECT o.id, o.name, m.role, m.added_at FROM org_members m JOIN organizations o ON o.id = m.org_id "
        "WHERE m.email = $1", email)]


async def forget_member(conn: asyncpg.Connection, email: str) -> int:
    """Account deletion: the address leaves every organization; returns the seats freed."""
    return int((await conn.execute("DELETE FROM org_members WHERE email = $1", email)).split()[-1])
