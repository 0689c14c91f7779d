"""Room records in Postgres: create, look up, and per-room roles.

The owner of the ``rooms`` and ``room_members`` tables: every other module
reads and writes them through these functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg

from ..errors import ApiError

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
POLICIES = ("public", "signed-in", "plans")


@dataclass(frozen=True)
class RoomRecord:
    id: int
    slug: str
    title: str
    access_policy: str
    access_plans: tuple[str, ...]
    owner_id: int | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> "RoomRecord":
        return cls(
            id=row["id"],
            slug=row["slug"],
            title=row["title"],
            access_policy=row["access_policy"],
            access_plans=tuple(row["access_plans"]),
            owner_id=row["owner_id"],
        )

    def public(self) -> dict:
        return {
            "slug": self.slug,
            "title": self.title,
            "access": {"policy": self.access_policy, "plans": list(self.access_plans)},
        }


def parse_policy(text: str) -> tuple[str, tuple[str, ...]]:
    """``public`` | ``signed-in`` | ``plan:CODE[,CODE...]`` -> (policy, plans)."""
    if text in ("public", "signed-in"):
        return text, ()
    if text.startswith("plan:"):
        plans = tuple(p.strip() for p in text[5:].split(",") if p.strip())
        if plans and all(re.fullmatch(r"[a-z0-9_-]{1,40}", p) for p in plans):
            return "plans", plans
    raise ValueError("policy must be public, signed-in or plan:CODE[,CODE...]")


async def create(
    db: asyncpg.Pool | asyncpg.Connection,
    slug: str,
    *,
    title: str = "",
    policy: str = "public",
    plans: tuple[str, ...] = (),
    owner_id: int | None = None,
) -> RoomRecord:
    if not SLUG.match(slug):
        raise ApiError(400, "invalid_slug", "slug: 1-63 of a-z, 0-9 and '-', starting with a letter or digit")
    if policy not in POLICIES:
        raise ApiError(400, "invalid_policy", "policy must be public, signed-in or plans")
    try:
        row = await db.fetchrow(
            """INSERT INTO rooms (slug, title, access_policy, access_plans, owner_id)
               VALUES ($1, $2, $3, $4, $5) RETURNING *""",
            slug, title, policy, list(plans), owner_id,
        )
    except asyncpg.UniqueViolationError:
        raise ApiError(409, "room_exists", f"a room named {slug!r} exists") from None
    except asyncpg.CheckViolationError:
        raise ApiError(400, "invalid_room", "room fields out of range") from None
    return RoomRecord.from_row(row)


async def get(db: asyncpg.Pool | asyncpg.Connection, slug: str) -> RoomRecord | None:
    if not SLUG.match(slug):
        return None
    row = await db.fetchrow("SELECT * FROM rooms WHERE slug = $1", slug)
    return RoomRecord.from_row(row) if row else None


async def require(db: asyncpg.Pool | asyncpg.Connection, slug: str) -> RoomRecord:
    room = await get(db, slug)
    if room is None:
        raise ApiError(404, "room_not_found", f"no room {slug!r}")
    return room


async def member_role(db: asyncpg.Pool | asyncpg.Connection, room_id: int, account_id: int) -> str | None:
    return await db.fetchval(
        "SELECT role FROM room_members WHERE room_id = $1 AND account_id = $2", room_id, account_id
    )


async def add_member(db: asyncpg.Pool | asyncpg.Connection, room_id: int, account_id: int, role: str) -> None:
    """Give an account a role in the room (kept if it has one); ForeignKeyViolationError: no such account."""
    await db.execute(
        "INSERT INTO room_members (room_id, account_id, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        room_id, account_id, role)


async def remove_member(db: asyncpg.Pool | asyncpg.Connection, room_id: int, account_id: int) -> None:
    await db.execute("DELETE FROM room_members WHERE room_id = $1 AND account_id = $2", room_id, account_id)


async def export_owned(db: asyncpg.Pool | asyncpg.Connection, account_id: int) -> list[dict]:
    return [dict(r) for r in await db.fetch(
        "SELECT slug, title, access_policy, access_plans, created_at FROM rooms WHERE owner_id = $1", account_id)]


async def export_roles(db: asyncpg.Pool | asyncpg.Connection, account_id: int) -> list[dict]:
    return [dict(r) for r in await db.fetch(
        "SELECT r.slug AS room, m.role, m.granted_at FROM room_members m JOIN rooms r ON r.id = m.room_id "
        "WHERE m.account_id = $1", account_id)]


async def listing(db: asyncpg.Pool | asyncpg.Connection, *, owner_id: int | None = None, everything: bool = False,
                  limit: int = 100) -> list[RoomRecord]:
    """Rooms, newest first. Without ``owner_id``: the public rooms (the home page's
    directory); with it: that account's rooms, whatever their policy; ``everything``:
    all rooms (operators)."""
    rows = await db.fetch(
        """SELECT * FROM rooms
           WHERE $3 OR ($1::bigint IS NULL AND access_policy = 'public') OR owner_id = $1
           ORDER BY created_at DESC LIMIT $2""", owner_id, limit, everything)
    return [RoomRecord.from_row(row) for row in rows]
