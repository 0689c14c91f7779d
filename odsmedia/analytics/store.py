"""The one writer of the analytics tables (docs/architecture.md, "Who owns what").

- ``write``: one batch of counts from a node's ``AudienceRecorder``, in one
  transaction of multi-row upserts; each new visitor hash adds one to its
  room-day and episode unique-viewer counts.  Rows for rooms or episodes
  deleted meanwhile are dropped by the joins.
- ``salt_for_day``: the day's secret, created by whichever node asks first.
- ``sweep`` (retention, docs/privacy.md): salts and visitor hashes go as soon
  as their UTC day is over, so nothing links two days; per-minute, per-sample
  and per-day counts go after ``analytics.aggregate_days``; per-episode
  counts go with their episode (foreign keys).
"""

from __future__ import annotations

import os
from datetime import date
from typing import Sequence

import asyncpg

_VISITORS = """
WITH fresh AS (
    INSERT INTO analytics_visitors (day, room_id, episode_id, audience, visitor)
    SELECT v.day, v.room_id, v.episode_id, v.audience, v.visitor
    FROM unnest($1::date[], $2::bigint[], $3::bigint[], $4::text[], $5::bytea[])
         AS v(day, room_id, episode_id, audience, visitor)
    JOIN rooms r ON r.id = v.room_id
    ON CONFLICT DO NOTHING
    RETURNING day, room_id, episode_id, audience),
by_room AS (
    INSERT INTO analytics_room_days AS d (room_id, day, live_viewers, replay_viewers)
    SELECT room_id, day, count(*) FILTER (WHERE audience = 'live'), count(*) FILTER (WHERE audience = 'replay')
    FROM fresh WHERE episode_id = 0 GROUP BY room_id, day
    ON CONFLICT (room_id, day) DO UPDATE
    SET live_viewers = d.live_viewers + EXCLUDED.live_viewers,
        replay_viewers = d.replay_viewers + EXCLUDED.replay_viewers)
INSERT INTO analytics_episodes AS e (episode_id, live_viewers, replay_viewers)
SELECT f.episode_id, count(*) FILTER (WHERE f.audience = 'live'), count(*) FILTER (WHERE f.audience = 'replay')
FROM fresh f JOIN episodes ep ON ep.id = f.episode_id
GROUP BY f.episode_id
ON CONFLICT (episode_id) DO UPDATE
SET live_viewers = e.live_viewers + EXCLUDED.live_viewers,
    replay_viewers = e.replay_viewers + EXCLUDED.replay_viewers
"""

_MINUTES = """
INSERT INTO analytics_room_minutes AS m
    (room_id, minute, joins, leaves, watch_seconds, messages, questions, answers, highlights)
SELECT v.* FROM unnest($1::bigint[], $2::timestamptz[], $3::int[], $4::int[], $5::float8[],
                       $6::int[], $7::int[], $8::int[], $9::int[])
     AS v(room_id, minute, joins, leaves, watch_seconds, messages, questions, answers, highlights)
JOIN rooms r ON r.id = v.room_id
ON CONFLICT (room_id, minute) DO UPDATE
SET joins = m.joins + EXCLUDED.joins, leaves = m.leaves + EXCLUDED.leaves,
    watch_seconds = m.watch_seconds + EXCLUDED.watch_seconds, messages = m.messages + EXCLUDED.messages,
    questions = m.questions + EXCLUDED.questions, answers = m.answers + EXCLUDED.answers,
    highlights = m.highlights + EXCLUDED.highlights
"""

_DAYS = """
INSERT INTO analytics_room_days AS d
    (room_id, day, joins, watch_seconds, replay_plays, replay_seconds, messages, questions, searches)
SELECT v.* FROM unnest($1::bigint[], $2::date[], $3::int[], $4::float8[], $5::int[], $6::float8[],
                       $7::int[], $8::int[], $9::int[])
     AS v(room_id, day, joins, watch_seconds, replay_plays, replay_seconds, messages, questions, searches)
JOIN rooms r ON r.id = v.room_id
ON CONFLICT (room_id, day) DO UPDATE
SET joins = d.joins + EXCLUDED.joins, watch_seconds = d.watch_seconds + EXCLUDED.watch_seconds,
    replay_plays = d.replay_plays + EXCLUDED.replay_plays,
    replay_seconds = d.replay_seconds + EXCLUDED.replay_seconds,
    messages = d.messages + EXCLUDED.messages, questions = d.questions + EXCLUDED.questions,
    searches = d.searches + EXCLUDED.searches
"""

_SAMPLES = """
INSERT INTO analytics_concurrency AS c (room_id, at, node, viewers)
SELECT v.room_id, v.at, $3, v.viewers FROM unnest($1::bigint[], $2::timestamptz[], $4::int[])
     AS v(room_id, at, viewers)
JOIN rooms r ON r.id = v.room_id
ON CONFLICT (room_id, at, node) DO UPDATE SET viewers = EXCLUDED.viewers
"""

_REPLAYS = """
INSERT INTO analytics_episodes AS e (episode_id, replay_plays, replay_seconds)
SELECT v.* FROM unnest($1::bigint[], $2::int[], $3::float8[]) AS v(episode_id, plays, seconds)
JOIN episodes ep ON ep.id = v.episode_id
ON CONFLICT (episode_id) DO UPDATE
SET replay_plays = e.replay_plays + EXCLUDED.replay_plays, replay_seconds = e.replay_seconds + EXCLUDED.replay_seconds
"""

_BUCKETS = """
INSERT INTO analytics_replay_buckets AS b (episode_id, bucket, plays)
SELECT v.* FROM unnest($1::bigint[], $2::int[], $3::int[]) AS v(episode_id, bucket, plays)
JOIN episodes ep ON ep.id = v.episode_id
ON CONFLICT (episode_id, bucket) DO UPDATE SET plays = b.plays + EXCLUDED.plays
"""


async def salt_for_day(db: asyncpg.Pool, day: date) -> bytes:
    return await db.fetchval(
        """WITH made AS (INSERT INTO analytics_salts (day, salt) VALUES ($1, $2)
                         ON CONFLICT (day) DO NOTHING RETURNING salt)
           SELECT salt FROM made UNION ALL SELECT salt FROM analytics_salts WHERE day = $1 LIMIT 1""",
        day, os.urandom(32))


def _columns(rows: Sequence[tuple]) -> list[list]:
    return [list(column) for column in zip(*rows)]


async def write(db: asyncpg.Pool, *, node: str, visitors: Sequence[tuple], minutes: Sequence[tuple],
                days: Sequence[tuple], samples: Sequence[tuple], replays: Sequence[tuple],
                buckets: Sequence[tuple]) -> None:
    """Rows as the tables' columns: visitors (day, room, episode, audience, hash), minutes (room, minute,
    joins, leaves, watch s, messages, questions, answers, highlights), days (room, day, joins, watch s,
    replay plays, replay s, messages, questions, searches), samples (room, at, viewers), replays
    (episode, plays, s), buckets (episode, bucket, plays)."""
    async with db.acquire() as conn, conn.transaction():
        if visitors:
            await conn.execute(_VISITORS, *_columns(visitors))
        if minutes:
            await conn.execute(_MINUTES, *_columns(minutes))
        if days:
            await conn.execute(_DAYS, *_columns(days))
        if samples:
            room_ids, ats, viewers = _columns(samples)
            await conn.execute(_SAMPLES, room_ids, ats, node, viewers)
        if replays:
            await conn.execute(_REPLAYS, *_columns(replays))
        if buckets:
            await conn.execute(_BUCKETS, *_columns(buckets))


def _count(status: str) -> int:
    return int(status.split()[-1])


async def sweep(db: asyncpg.Pool, *, aggregate_days: int) -> dict[str, int]:
    today = "(now() AT TIME ZONE 'UTC')::date"
    removed: dict[str, int] = {}
    async with db.acquire() as conn, conn.transaction():
        removed["analytics_salts"] = _count(await conn.execute(f"DELETE FROM analytics_salts WHERE day < {today}"))
        removed["analytics_visitors"] = _count(await conn.execute(
            f"DELETE FROM analytics_visitors WHERE day < {today}"))
        removed["analytics_room_minutes"] = _count(await conn.execute(
            "DELETE FROM analytics_room_minutes WHERE minute < now() - make_interval(days => $1)", aggregate_days))
        removed["analytics_concurrency"] = _count(await conn.execute(
            "DELETE FROM analytics_concurrency WHERE at < now() - make_interval(days => $1)", aggregate_days))
        removed["analytics_room_days"] = _count(await conn.execute(
            f"DELETE FROM analytics_room_days WHERE day < {today} - $1::int", aggregate_days))
    return removed
