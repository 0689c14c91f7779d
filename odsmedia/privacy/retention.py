"""Retention per the privacy policy's summary table.

- Usage logs: raw request rows older than ``privacy.request_log_days`` are
  folded into ``analytics_daily`` (route x region counts) and deleted, in one
  transaction, so the aggregate never double counts.
- Authentication material: expired or used magic links, expired sessions,
  expired or revoked API tokens are deleted; sign-in events older than
  ``privacy.session_event_days`` are deleted.
Each table's owner module does the deleting; this module decides when.
Tables owned by features that are not installed are skipped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import asyncpg

from ..auth import events, links, sessions, tokens
from ..errors import STORAGE_ERRORS
from . import requestlog

log = logging.getLogger("odsmedia.privacy")

Expire = Callable[[asyncpg.Connection], Awaitable[int]]

# Each table's owner deletes what has expired; a table whose feature is not installed is skipped.
_EXPIRED: tuple[tuple[str, Expire], ...] = (
    ("api_tokens", tokens.expire),
    ("magic_links", links.expire),
    ("sessions", sessions.expire),
)


async def sweep(db: asyncpg.Pool, *, request_log_days: int, session_event_days: int) -> dict[str, int]:
    removed: dict[str, int] = {}
    async with db.acquire() as conn:
        async with conn.transaction():
            removed["request_logs"] = await requestlog.roll_up(conn, request_log_days)
        existing = {
            r["relname"]
            for r in await conn.fetch(
                "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
            )
        }
        for table, expire in _EXPIRED:
            if table in existing:
                removed[table] = await expire(conn)
        if "session_events" in existing:
            removed["session_events"] = await events.expire(conn, session_event_days)
    return removed


async def run(db: asyncpg.Pool, interval: float, **limits: int) -> None:
    while True:
        try:
            removed = await sweep(db, **limits)
            if any(removed.values()):
                log.info("retention sweep", extra={"removed": removed})
        except STORAGE_ERRORS:
            log.warning("retention sweep failed; will retry")
        await asyncio.sleep(interval)
