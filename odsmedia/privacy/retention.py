"""Retention per the privacy policy's summary table.

- Usage logs: raw request rows older than ``privacy.request_log_days`` are
  folded into ``analytics_daily`` (route x region counts) and deleted, in one
  transaction, so the aggregate never double counts.
- Authentication material: expired or used magic links, expired sessions,
  expired or revoked API tokens are deleted; sign-in events older than
  ``privacy.session_event_days`` are deleted.
Tables owned by features that are not installed are skipped.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

log = logging.getLogger("odsmedia.privacy")

# (table, condition) pairs; each runs only if the table exists.
_EXPIRED = (
    ("api_tokens", "expires_at < now() - interval '7 days' OR revoked_at < now() - interval '7 days'"),
    ("magic_links", "expires_at < now() - interval '1 day'"),
    ("sessions", "expires_at < now() - interval '1 day' OR revoked_at < now() - interval '7 days'"),
)


async def sweep(db: asyncpg.Pool, *, request_log_days: int, session_event_days: int) -> dict[str, int]:
    removed: dict[str, int] = {}
    async with db.acquire() as conn:
        async with conn.transaction():
            await conn.execute(
                """INSERT INTO analytics_daily (day, route, region, requests, errors)
                   SELECT at::date, route, region, count(*), count(*) FILTER (WHERE status >= 500)
                   FROM request_logs WHERE at < now() - make_interval(days => $1)
                   GROUP BY 1, 2, 3
                   ON CONFLICT (day, route, region) DO UPDATE
                   SET requests = analytics_daily.requests + EXCLUDED.requests,
                       errors = analytics_daily.errors + EXCLUDED.errors""",
                request_log_days,
            )
            status = await conn.execute(
                "DELETE FROM request_logs WHERE at < now() - make_interval(days => $1)", request_log_days
            )
            removed["request_logs"] = int(status.split()[-1])
        existing = {
            r["relname"]
            for r in await conn.fetch(
                "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
            )
        }
        for table, condition in _EXPIRED:
            if table in existing:
                status = await conn.execute(f"DELETE FROM {table} WHERE {condition}")
                removed[table] = int(status.split()[-1])
        if "session_events" in existing:
            status = await conn.execute(
                "DELETE FROM session_events WHERE at < now() - make_interval(days => $1)", session_event_days
            )
            removed["session_events"] = int(status.split()[-1])
    return removed


async def run(db: asyncpg.Pool, interval: float, **limits: int) -> None:
    while True:
        try:
            removed = await sweep(db, **limits)
            if any(removed.values()):
                log.info("retention sweep", extra={"removed": removed})
        except (asyncpg.PostgresError, OSError):
            log.warning("retention sweep failed; will retry")
        await asyncio.sleep(interval)
