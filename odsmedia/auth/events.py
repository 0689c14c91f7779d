"""The sign-in audit: what happened, when, and the client's coarse region (never its address)."""

from __future__ import annotations

import asyncpg

KINDS = ("sign_in", "sign_out", "link_failed", "link_expired", "revoked")


async def record(
    db: asyncpg.Pool | asyncpg.Connection,
    kind: str,
    *,
    region: str,
    account_id: int | None = None,
    session_id: int | None = None,
) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown session event {kind!r}")
    await db.execute(
        "INSERT INTO session_events (kind, account_id, session_id, region) VALUES ($1, $2, $3, $4)",
        kind, account_id, session_id, region,
    )


async def recent(db: asyncpg.Pool | asyncpg.Connection, account_id: int, limit: int = 50) -> list[dict]:
    rows = await db.fetch(
        """SELECT at, kind, region FROM session_events WHERE account_id = $1
           ORDER BY at DESC, id DESC LIMIT $2""",
        account_id, limit,
    )
    return [{"at": r["at"].isoformat(), "kind": r["kind"], "region": r["region"]} for r in rows]


async def export(db: asyncpg.Pool | asyncpg.Connection, account_id: int) -> list[dict]:
    return [dict(r) for r in await db.fetch(
        "SELECT at, kind, session_id, region FROM session_events WHERE account_id = $1 ORDER BY at", account_id)]


async def expire(db: asyncpg.Pool | asyncpg.Connection, days: int) -> int:
    """Retention: sign-in events older than ``days`` go; returns how many."""
    status = await db.execute("DELETE FROM session_events WHERE at < now() - make_interval(days => $1)", days)
    return int(status.split()[-1])
