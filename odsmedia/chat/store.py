"""Chat persistence in Postgres (asyncpg).

Every write takes the room's next sequence number in the same statement
(see migrations/0003_chat.sql for why that makes Postgres the source of
order); the hub publishes only what this module has committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

import asyncpg

from ..storage import transaction
from .items import ChatError, ChatItem

Db = asyncpg.Pool | asyncpg.Connection

# Bumps (or creates) the room's sequence row; the row lock it takes is held
# until commit, which serializes writers of one room.
_NEXT_SEQ = """
    INSERT INTO chat_rooms (room_id, last_seq) VALUES ($1, 1)
    ON CONFLICT (room_id) DO UPDATE SET last_seq = chat_rooms.last_seq + 1
    RETURNING last_seq"""

# One statement per post: refuse (no row, no seq taken) when the author has a running timeout or ban, or its account
# was deleted or its token revoked (the socket closes within auth.reauth_interval), take the room's next seq, stamp the
# live episode offset. The id casts sit in CASE: a generic plan may cast 'v:x' to bigint before testing the LIKE.
_POST = """
    WITH blocked AS (
           SELECT 1 FROM chat_sanctions
           WHERE room_id = $1 AND subject = $3 AND (until IS NULL OR until > now())
           UNION ALL
           SELECT 1 WHERE $3 LIKE 'a:%' AND NOT EXISTS (
               SELECT 1 FROM accounts WHERE id = CASE WHEN $3 LIKE 'a:%' THEN substr($3, 3)::bigint END)
           UNION ALL
           SELECT 1 WHERE $3 LIKE 't:%' AND NOT EXISTS (
               SELECT 1 FROM api_tokens WHERE id = CASE WHEN $3 LIKE 't:%' THEN substr($3, 3)::bigint END
                                              AND revoked_at IS NULL AND expires_at > now())),
         s AS (
           INSERT INTO chat_rooms (room_id, last_seq) SELECT $1, 1 WHERE NOT EXISTS (SELECT 1 FROM blocked)
           ON CONFLICT (room_id) DO UPDATE SET last_seq = chat_rooms.last_seq + 1
           RETURNING last_seq),
         e AS (SELECT id, started_at FROM episodes WHERE room_id = $1 AND status = 'live')
    INSERT INTO chat_items (room_id, id, changed_seq, kind, author, author_name, author_role, body,
                            episode_id, episode_offset)
    SELECT $1, s.last_seq, s.last_seq, $2, $3, $4, $6, $5,
           e.id, CASE WHEN e.id IS NOT NULL
                       THEN greatest(0, extract(epoch FROM (now() - e.started_at)))::double precision END
    FROM s LEFT JOIN e ON true
    RETURNING *"""


@dataclass
class Snapshot:
    """What a joining client starts from: items, deletions it must apply, and the cursor."""

    cursor: int
    items: list[ChatItem] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    reset: bool = False


async def post(db: Db, room_id: int, *, kind: str, author: str, author_name: str, text: str,
               author_role: str = "viewer") -> ChatItem | None:
    """The stored item, or None when the author is timed out or banned in the room."""
    row = await db.fetchrow(_POST, room_id, kind, author, author_name[:80], text, author_role)
    return ChatItem.from_row(row) if row else None


async def get(db: Db, room_id: int, item_id: int) -> ChatItem | None:
    row = await db.fetchrow("SELECT * FROM chat_items WHERE room_id = $1 AND id = $2", room_id, item_id)
    return ChatItem.from_row(row) if row else None


async def _require_live(conn: asyncpg.Connection, room_id: int, item_id: int) -> asyncpg.Record:
    # Callers take the room's seq first (lock order: chat_rooms row, then items),
    # and a refusal rolls that seq back with the transaction.
    row = await conn.fetchrow(
        "SELECT * FROM chat_items WHERE room_id = $1 AND id = $2 FOR UPDATE", room_id, item_id)
    if row is None or row["deleted_at"] is not None:
        raise ChatError("item_not_found", f"no item {item_id} in this room")
    return row


async def upvote(db: Db, room_id: int, item_id: int, subject: str) -> ChatItem:
    async with transaction(db) as conn:
        seq = await conn.fetchval(_NEXT_SEQ, room_id)
        row = await _require_live(conn, room_id, item_id)
        if row["kind"] != "question":
            raise ChatError("not_a_question", "only questions can be upvoted")
        # A vote is speech too: a timed-out or banned subject casts none.
        sanction = await active_sanction(conn, room_id, subject)
        if sanction is not None:
            raise _sanctioned(sanction)
        inserted = await conn.fetchval(
            "INSERT INTO chat_votes (room_id, item_id, subject) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING RETURNING 1", room_id, item_id, subject)
        if not inserted:
            raise ChatError("already_voted", "you upvoted this question already")
        row = await conn.fetchrow(
            "UPDATE chat_items SET votes = votes + 1, changed_seq = $3 WHERE room_id = $1 AND id = $2 RETURNING *",
            room_id, item_id, seq)
    return ChatItem.from_row(row)


async def mark_answered(db: Db, room_id: int, item_id: int, answered: bool = True) -> ChatItem:
    async with transaction(db) as conn:
        seq = await conn.fetchval(_NEXT_SEQ, room_id)
        row = await _require_live(conn, room_id, item_id)
        if row["kind"] != "question":
            raise ChatError("not_a_question", "only questions can be marked answered")
        row = await conn.fetchrow(
            "UPDATE chat_items SET answered_at = CASE WHEN $4 THEN coalesce(answered_at, now()) END, "
            "changed_seq = $3 WHERE room_id = $1 AND id = $2 RETURNING *",
            room_id, item_id, seq, answered)
    return ChatItem.from_row(row)


async def delete(db: Db, room_id: int, item_id: int, by: str) -> ChatItem:
    """Tombstone one item: its text is gone from history, replay and search."""
    async with transaction(db) as conn:
        seq = await conn.fetchval(_NEXT_SEQ, room_id)
        await _require_live(conn, room_id, item_id)
        row = await conn.fetchrow(
            "UPDATE chat_items SET body = '', deleted_at = now(), deleted_by = $4, changed_seq = $3 "
            "WHERE room_id = $1 AND id = $2 RETURNING *", room_id, item_id, seq, by)
        await conn.execute("DELETE FROM chat_votes WHERE room_id = $1 AND item_id = $2", room_id, item_id)
    return ChatItem.from_row(row)


async def clear(db: Db, room_id: int, by: str) -> tuple[int, list[int]]:
    """Tombstone every live item of the room under one seq; returns (seq, ids)."""
    async with transaction(db) as conn:
        seq = await conn.fetchval(_NEXT_SEQ, room_id)
        rows = await conn.fetch(
            "UPDATE chat_items SET body = '', deleted_at = now(), deleted_by = $3, changed_seq = $2 "
            "WHERE room_id = $1 AND deleted_at IS NULL RETURNING id", room_id, seq, by)
        await conn.execute("DELETE FROM chat_votes WHERE room_id = $1", room_id)
    return seq, sorted(r["id"] for r in rows)


async def forget_author(conn: asyncpg.Connection, subject: str) -> tuple[int, int]:
    """Account deletion, inside the caller's transaction: tombstone the author's
    items and withdraw their upvotes, each room's changes under its next seq so
    resuming clients learn of them. Returns (items tombstoned, votes withdrawn)."""
    tombstoned = 0
    for row in await conn.fetch(
            "SELECT DISTINCT room_id FROM chat_items WHERE author = $1 AND deleted_at IS NULL", subject):
        seq = await conn.fetchval(_NEXT_SEQ, row["room_id"])
        status = await conn.execute(
            "UPDATE chat_items SET body = '', author_name = '', deleted_at = now(), "
            "deleted_by = 'account_deleted', changed_seq = $3 "
            "WHERE room_id = $1 AND author = $2 AND deleted_at IS NULL", row["room_id"], subject, seq)
        tombstoned += int(status.split()[-1])
    for row in await conn.fetch("SELECT DISTINCT room_id FROM chat_votes WHERE subject = $1", subject):
        seq = await conn.fetchval(_NEXT_SEQ, row["room_id"])
        await conn.execute(
            "UPDATE chat_items c SET votes = c.votes - 1, changed_seq = $3 FROM chat_votes v "
            "WHERE v.subject = $2 AND v.room_id = $1 AND c.room_id = v.room_id AND c.id = v.item_id",
            row["room_id"], subject, seq)
    withdrawn = int((await conn.execute("DELETE FROM chat_votes WHERE subject = $1", subject)).split()[-1])
    await conn.execute("DELETE FROM chat_sanctions WHERE subject = $1", subject)
    return tombstoned, withdrawn


async def last_seq(db: Db, room_id: int) -> int:
    return await db.fetchval("SELECT last_seq FROM chat_rooms WHERE room_id = $1", room_id) or 0


async def room_state(db: Db, room_id: int) -> tuple[int, int]:
    """(last seq, slow mode seconds) of a room."""
    row = await db.fetchrow("SELECT last_seq, slow_mode_seconds FROM chat_rooms WHERE room_id = $1", room_id)
    return (row["last_seq"], row["slow_mode_seconds"]) if row else (0, 0)


async def room_states(db: Db, room_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
    rows = await db.fetch("SELECT room_id, last_seq, slow_mode_seconds FROM chat_rooms WHERE room_id = ANY($1)",
                          list(room_ids))
    return {r["room_id"]: (r["last_seq"], r["slow_mode_seconds"]) for r in rows}


async def changes_after(db: Db, room_id: int, after: int, limit: int = 5000) -> list[ChatItem]:
    rows = await db.fetch(
        "SELECT * FROM chat_items WHERE room_id = $1 AND changed_seq > $2 ORDER BY changed_seq, id LIMIT $3",
        room_id, after, limit)
    return [ChatItem.from_row(r) for r in rows]


def events_of(changes: list[ChatItem]) -> list[dict[str, Any]]:
    """Stream events for changed rows, in seq order; one ``deleted`` event per seq."""
    events: list[dict[str, Any]] = []
    for item in changes:
        if item.deleted and events and events[-1]["type"] == "deleted" and events[-1]["seq"] == item.changed_seq:
            events[-1]["ids"].append(item.id)
        else:
            events.append(item.event())
    return events


async def snapshot(pool: asyncpg.Pool, room_id: int, *, after: int | None, history: int,
                   resume_limit: int = 5000) -> Snapshot:
    """History for a new client, or everything after ``after`` for a resuming one.

    Read in one repeatable-read snapshot so the cursor matches the items exactly.
    """
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = await last_seq(conn, room_id)
        if after is not None and 0 <= after <= cursor:
            changes = await changes_after(conn, room_id, after, resume_limit + 1)
            if len(changes) <= resume_limit:
                snap = Snapshot(cursor)
                for item in changes:
                    if item.deleted:
                        if item.id <= after:  # a client never saw items posted after its cursor
                            snap.deleted.append(item.id)
                    else:
                        snap.items.append(item)
                snap.items.sort(key=lambda i: i.id)
                return snap
        rows = await conn.fetch(
            "SELECT * FROM chat_items WHERE room_id = $1 AND deleted_at IS NULL ORDER BY id DESC LIMIT $2",
            room_id, history)
        # A cursor from the future (another database) or too far behind: start over.
        return Snapshot(cursor, [ChatItem.from_row(r) for r in reversed(rows)], reset=after is not None)


# -- sanctions and settings ------------------------------------------------------------

@dataclass(frozen=True)
class Sanction:
    kind: str
    until: datetime | None


def _sanctioned(sanction: "Sanction") -> ChatError:
    if sanction.kind == "ban":
        return ChatError("banned", "you are banned from this room")
    return ChatError("timed_out", "you are timed out", until=sanction.until.isoformat() if sanction.until else None)


async def active_sanction(db: Db, room_id: int, subject: str) -> Sanction | None:
    """The subject's ban, else its running timeout, else None."""
    row = await db.fetchrow(
        "SELECT kind, until FROM chat_sanctions WHERE room_id = $1 AND subject = $2 "
        "AND (until IS NULL OR until > now()) ORDER BY (kind = 'ban') DESC LIMIT 1", room_id, subject)
    return Sanction(row["kind"], row["until"]) if row else None


async def slow_mode(db: Db, room_id: int) -> int:
    return await db.fetchval("SELECT slow_mode_seconds FROM chat_rooms WHERE room_id = $1", room_id) or 0


# -- replay and search --------------------------------------------------------------

async def episode_window(db: Db, episode_id: int, start: float, end: float, limit: int) -> list[ChatItem]:
    rows = await db.fetch(
        "SELECT * FROM chat_items WHERE episode_id = $1 AND deleted_at IS NULL "
        "AND episode_offset >= $2 AND episode_offset <= $3 ORDER BY episode_offset, id LIMIT $4",
        episode_id, start, end, limit)
    return [ChatItem.from_row(r) for r in rows]


async def episode_highlights(db: Db, episode_id: int, limit: int = 1000) -> list[ChatItem]:
    rows = await db.fetch(
        "SELECT * FROM chat_items WHERE episode_id = $1 AND deleted_at IS NULL AND kind = 'highlight' "
        "ORDER BY episode_offset, id LIMIT $2", episode_id, limit)
    return [ChatItem.from_row(r) for r in rows]


async def search(db: Db, room_id: int, query: str, limit: int) -> list[ChatItem]:
    rows = await db.fetch(
        """SELECT i.* FROM chat_items i, websearch_to_tsquery('english', $2) q
           WHERE i.room_id = $1 AND i.deleted_at IS NULL AND i.kind IN ('message', 'question')
             AND i.search @@ q
           ORDER BY ts_rank(i.search, q) DESC, i.id DESC LIMIT $3""",
        room_id, query, limit)
    return [ChatItem.from_row(r) for r in rows]


async def export(db: Db, subject: str) -> dict[str, list[dict[str, Any]]]:
    """What chat holds about one subject: items, votes, sanctions (the privacy export)."""
    return {
        "chat_items": [dict(r) for r in await db.fetch(
            "SELECT r.slug AS room, c.id, c.kind, c.body, c.author_name, c.created_at, c.episode_id, "
            "c.episode_offset, c.votes, c.answered_at, c.deleted_at FROM chat_items c "
            "JOIN rooms r ON r.id = c.room_id WHERE c.author = $1 ORDER BY c.created_at", subject)],
        "chat_votes": [dict(r) for r in await db.fetch(
            "SELECT r.slug AS room, v.item_id, v.created_at FROM chat_votes v JOIN rooms r ON r.id = v.room_id "
            "WHERE v.subject = $1", subject)],
        "chat_sanctions": [dict(r) for r in await db.fetch(
            "SELECT r.slug AS room, s.kind, s.until, s.reason, s.created_at FROM chat_sanctions s "
            "JOIN rooms r ON r.id = s.room_id WHERE s.subject = $1", subject)],
    }


# -- sanctions and room settings (moderation writes them here) ---------------------------

async def time_out(db: Db, room_id: int, subject: str, minutes: int, *, by: str, reason: str) -> datetime:
    """Start (or restart) a timeout; returns when it ends."""
    return await db.fetchval(
        """INSERT INTO chat_sanctions (room_id, subject, kind, until, by_subject, reason)
           VALUES ($1, $2, 'timeout', now() + make_interval(mins => $3), $4, $5)
           ON CONFLICT (room_id, subject, kind) DO UPDATE
           SET until = excluded.until, by_subject = excluded.by_subject, reason = excluded.reason,
               created_at = now()
           RETURNING until""", room_id, subject, minutes, by, reason)


async def ban(db: Db, room_id: int, subject: str, *, by: str, reason: str) -> None:
    await db.execute(
        """INSERT INTO chat_sanctions (room_id, subject, kind, until, by_subject, reason)
           VALUES ($1, $2, 'ban', NULL, $3, $4)
           ON CONFLICT (room_id, subject, kind) DO UPDATE
           SET by_subject = excluded.by_subject, reason = excluded.reason, created_at = now()""",
        room_id, subject, by, reason)


async def lift_sanction(db: Db, room_id: int, subject: str, kind: str) -> bool:
    """End a ban or timeout; False when there was none."""
    status = await db.execute(
        "DELETE FROM chat_sanctions WHERE room_id = $1 AND subject = $2 AND kind = $3", room_id, subject, kind)
    return not status.endswith(" 0")


async def running_sanctions(db: Db, room_id: int, limit: int = 500) -> list[asyncpg.Record]:
    # name: what the person last posted as in this room (NULL if nothing kept), so a moderator
    # lifting a sanction sees a name and not a subject id.
    return await db.fetch(
        """SELECT s.subject, s.kind, s.until, s.by_subject, s.reason, s.created_at,
                  (SELECT c.author_name FROM chat_items c
                    WHERE c.author = s.subject AND c.room_id = s.room_id AND c.author_name <> ''
                    ORDER BY c.id DESC LIMIT 1) AS name
           FROM chat_sanctions s
           WHERE s.room_id = $1 AND (s.until IS NULL OR s.until > now()) ORDER BY s.created_at DESC LIMIT $2""",
        room_id, limit)


async def set_slow_mode(db: Db, room_id: int, seconds: int) -> None:
    await db.execute(
        """INSERT INTO chat_rooms (room_id, slow_mode_seconds) VALUES ($1, $2)
           ON CONFLICT (room_id) DO UPDATE SET slow_mode_seconds = excluded.slow_mode_seconds""",
        room_id, seconds)
