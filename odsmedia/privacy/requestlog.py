"""Request logging with a region instead of an address, batched into Postgres.

The middleware only appends a tuple to a bounded buffer; a background task
copies the buffer into ``request_logs`` every couple of seconds.  Under
overload the oldest entries are dropped rather than slowing requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from datetime import datetime, timezone

import asyncpg
from aiohttp import web

from ..analytics.sink import opted_out
from ..errors import STORAGE_ERRORS
from ..keys import SUBJECT
from .region import client_region

log = logging.getLogger("odsmedia.privacy")

# Probes and scrapes would drown the useful rows.
SKIP_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
COLUMNS = ("at", "method", "route", "status", "duration_ms", "region", "subject", "counted")


class RequestLog:
    def __init__(self, trusted_proxies: tuple[str, ...] = (), capacity: int = 20000) -> None:
        self.trusted_proxies = trusted_proxies
        self.buffer: deque[tuple] = deque(maxlen=capacity)

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            if route not in SKIP_ROUTES:
                self.buffer.append((
                    datetime.now(timezone.utc),
                    request.method,
                    route,
                    status,
                    (time.perf_counter() - started) * 1000.0,
                    client_region(request, self.trusted_proxies),
                    request.get(SUBJECT),
                    # Kept for security like any other row, but left out of the analytics roll-up.
                    not opted_out(request.headers),
                ))

    async def flush(self, db: asyncpg.Pool) -> int:
        if not self.buffer:
            return 0
        rows = list(self.buffer)
        self.buffer.clear()
        await db.copy_records_to_table("request_logs", records=rows, columns=COLUMNS)
        return len(rows)

    async def run(self, db: asyncpg.Pool, interval: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush(db)
            except STORAGE_ERRORS:
                log.warning("request log flush failed; will retry")


REQUEST_LOG: web.AppKey[RequestLog] = web.AppKey("request_log", RequestLog)


async def export(db: asyncpg.Pool | asyncpg.Connection, subject: str) -> list[dict]:
    return [dict(r) for r in await db.fetch(
        "SELECT at, method, route, status, region FROM request_logs WHERE subject = $1 ORDER BY at", subject)]


async def forget(conn: asyncpg.Connection, subject: str) -> None:
    """Account deletion: the log rows stay (aggregate counts) without the subject."""
    await conn.execute("UPDATE request_logs SET subject = NULL WHERE subject = $1", subject)


async def roll_up(conn: asyncpg.Connection, days: int) -> int:
    """Retention, in the caller's transaction: rows older than ``days`` are folded into
    ``analytics_daily`` (route x region counts) and deleted, so the aggregate never double
    counts; rows of opted-out requests (DNT, Sec-GPC) are deleted without being counted.  Returns the rows deleted."""
    await conn.execute(
        """INSERT INTO analytics_daily (day, route, region, requests, errors)
           SELECT at::date, route, region, count(*), count(*) FILTER (WHERE status >= 500)
           FROM request_logs WHERE at < now() - make_interval(days => $1) AND counted
           GROUP BY 1, 2, 3
           ON CONFLICT (day, route, region) DO UPDATE
           SET requests = analytics_daily.requests + EXCLUDED.requests,
               errors = analytics_daily.errors + EXCLUDED.errors""",
        days,
    )
    status = await conn.execute("DELETE FROM request_logs WHERE at < now() - make_interval(days => $1)", days)
    return int(status.split()[-1])
