"""What the pages show, read from the aggregates: a session report per
episode, and the operator's view of the whole service.

Every table a page shows is a ``Table``, so the same rows render as HTML
and as the CSV download next to it.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Sequence

import asyncpg

from .events import BUCKET_SECONDS

TOP_QUESTIONS = 10
OPERATOR_DAYS = 30


@dataclass
class Table:
    name: str                       # CSV file name and ?table= value
    caption: str
    columns: Sequence[str]
    rows: list[Sequence[Any]] = field(default_factory=list)

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([_csv_cell(v) for v in row])
        return out.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, float):
        return str(round(value, 3))
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value      # spreadsheets would run it as a formula
    return value


@dataclass
class Episode:
    id: int
    room_id: int
    room_slug: str
    room_title: str
    title: str
    status: str
    started_at: datetime
    ended_at: datetime | None
    duration: float

    @property
    def end(self) -> datetime:
        return self.ended_at or datetime.now(timezone.utc)

    @property
    def length(self) -> float:
        return max(self.duration, (self.end - self.started_at).total_seconds())


@dataclass
class SessionReport:
    episode: Episode
    samples: list[tuple[float, int]]            # (seconds from start, concurrent viewers)
    peak: int
    average: float
    watch_seconds: float
    joins: int
    live_viewers: int
    minutes: list[tuple[float, int, int]]       # (seconds from start, messages, questions)
    answers: int
    top_questions: Table
    highlights: Table
    replay_plays: int
    replay_seconds: float
    replay_viewers: int
    retention: list[tuple[float, int]]          # (seconds into the episode, plays that reached it)
    per_minute: Table = field(init=False)
    replay_table: Table = field(init=False)

    def __post_init__(self) -> None:
        self.per_minute = Table("per_minute", "Chat and questions per minute",
                                ("minute", "messages", "questions"),
                                [(int(s // 60), m, q) for s, m, q in self.minutes])
        first = self.retention[0][1] if self.retention else 0
        self.replay_table = Table(
            "replay_retention", "Replay audience by 10 s of the episode", ("from_second", "plays", "percent"),
            [(int(s), p, round(100.0 * p / first, 1) if first else 0.0) for s, p in self.retention])

    def tables(self) -> list[Table]:
        return [self.top_questions, self.highlights, self.per_minute, self.replay_table]


async def episode(db: asyncpg.Pool, episode_id: int) -> Episode | None:
    row = await db.fetchrow(
        "SELECT e.id, e.room_id, r.slug, r.title AS room_title, e.title, e.status, e.started_at, e.ended_at, "
        "e.duration FROM episodes e JOIN rooms r ON r.id = e.room_id WHERE e.id = $1", episode_id)
    if row is None:
        return None
    return Episode(row["id"], row["room_id"], row["slug"], row["room_title"], row["title"], row["status"],
                   row["started_at"], row["ended_at"], row["duration"])


async def session_report(db: asyncpg.Pool, ep: Episode) -> SessionReport:
    start, end = ep.started_at, ep.end
    async with db.acquire() as conn:
        samples = [((r["at"] - start).total_seconds(), r["viewers"]) for r in await conn.fetch(
            "SELECT at, sum(viewers)::int AS viewers FROM analytics_concurrency "
            "WHERE room_id = $1 AND at >= $2 AND at <= $3 GROUP BY at ORDER BY at", ep.room_id, start, end)]
        minute_rows = await conn.fetch(
            "SELECT minute, joins, watch_seconds, messages, questions, answers FROM analytics_room_minutes "
            "WHERE room_id = $1 AND minute >= date_trunc('minute', $2::timestamptz) AND minute <= $3 "
            "ORDER BY minute", ep.room_id, start, end)
        totals = await conn.fetchrow("SELECT * FROM analytics_episodes WHERE episode_id = $1", ep.id)
        questions = await conn.fetch(
            "SELECT body, votes, answered_at IS NOT NULL AS answered, episode_offset FROM chat_items "
            "WHERE episode_id = $1 AND kind = 'question' AND deleted_at IS NULL "
            "ORDER BY votes DESC, id LIMIT $2", ep.id, TOP_QUESTIONS)
        highlights = await conn.fetch(
            "SELECT episode_offset, body, author_name FROM chat_items "
            "WHERE episode_id = $1 AND kind = 'highlight' AND deleted_at IS NULL ORDER BY episode_offset, id",
            ep.id)
        buckets = await conn.fetch(
            "SELECT bucket, plays FROM analytics_replay_buckets WHERE episode_id = $1 ORDER BY bucket", ep.id)
    views = [v for _, v in samples]
    # Every minute of the session, quiet ones as zeros, so the chart and the CSV have no gaps.
    base = start.replace(second=0, microsecond=0)
    counted = {int((r["minute"] - base).total_seconds() // 60): (r["messages"], r["questions"]) for r in minute_rows}
    span = max(1, math.ceil((end - base).total_seconds() / 60))
    minutes = [(60.0 * m, *counted.get(m, (0, 0))) for m in range(max(span, max(counted, default=0) + 1))]
    last_bucket = int(ep.length // BUCKET_SECONDS)
    plays = {r["bucket"]: r["plays"] for r in buckets}
    retention = ([(b * BUCKET_SECONDS, plays.get(b, 0)) for b in range(last_bucket + 1)] if plays else [])
    return SessionReport(
        episode=ep, samples=samples, peak=max(views, default=0),
        average=round(sum(views) / len(views), 1) if views else 0.0,
        watch_seconds=sum(r["watch_seconds"] for r in minute_rows),
        joins=sum(r["joins"] for r in minute_rows),
        live_viewers=totals["live_viewers"] if totals else 0,
        minutes=minutes, answers=sum(r["answers"] for r in minute_rows),
        top_questions=Table("top_questions", "Top questions", ("question", "votes", "answered", "at"),
                            [(r["body"], r["votes"], "yes" if r["answered"] else "no",
                              _offset(r["episode_offset"])) for r in questions]),
        highlights=Table("highlights", "Highlights", ("at", "note", "by"),
                         [(_offset(r["episode_offset"]), r["body"], r["author_name"]) for r in highlights]),
        replay_plays=totals["replay_plays"] if totals else 0,
        replay_seconds=totals["replay_seconds"] if totals else 0.0,
        replay_viewers=totals["replay_viewers"] if totals else 0,
        retention=retention,
    )


def _offset(seconds: float | None) -> str:
    from .charts import clock

    return clock(seconds or 0)


# --- the operator's view ----------------------------------------------------------------------

@dataclass
class Overview:
    live: Table
    sessions: Table
    days: Table
    day_points: list[tuple[float, int, float]]     # (days since first_day, viewers, watch hours)
    first_day: date

    def tables(self) -> list[Table]:
        return [self.live, self.sessions, self.days]


async def overview(db: asyncpg.Pool, *, sample_interval: float, days: int = OPERATOR_DAYS) -> Overview:
    async with db.acquire() as conn:
        live = await conn.fetch(
            """WITH recent AS (
                   SELECT DISTINCT ON (room_id, node) room_id, node, viewers FROM analytics_concurrency
                   WHERE at >= now() - make_interval(secs => $1) ORDER BY room_id, node, at DESC)
               SELECT r.slug, r.title, e.id AS episode_id, e.started_at,
                      coalesce(sum(c.viewers), 0)::int AS viewers, e.node,
                      array_remove(array_agg(DISTINCT c.node), NULL) AS nodes
               FROM episodes e JOIN rooms r ON r.id = e.room_id
               LEFT JOIN recent c ON c.room_id = e.room_id
               WHERE e.status = 'live'
               GROUP BY r.slug, r.title, e.id, e.started_at, e.node ORDER BY viewers DESC, r.slug""",
            3 * sample_interval)
        sessions = await conn.fetch(
            """SELECT e.id, r.slug, e.title, e.status, e.started_at, e.duration,
                      coalesce(a.live_viewers, 0) AS live_viewers,
                      (SELECT coalesce(max(s.viewers), 0) FROM (
                           SELECT sum(viewers) AS viewers FROM analytics_concurrency c
                           WHERE c.room_id = e.room_id AND c.at BETWEEN e.started_at AND coalesce(e.ended_at, now())
                           GROUP BY c.at) s)::int AS peak,
                      (SELECT coalesce(sum(m.watch_seconds), 0) FROM analytics_room_minutes m
                       WHERE m.room_id = e.room_id AND m.minute >= date_trunc('minute', e.started_at)
                         AND m.minute <= coalesce(e.ended_at, now())) AS watch_seconds,
                      coalesce(a.replay_plays, 0) AS replay_plays
               FROM episodes e JOIN rooms r ON r.id = e.room_id
               LEFT JOIN analytics_episodes a ON a.episode_id = e.id
               WHERE e.started_at >= now() - make_interval(days => $1)
               ORDER BY e.started_at DESC LIMIT 500""", days)
        day_rows = await conn.fetch(
            """SELECT g.day::date AS day, coalesce(sum(d.live_viewers), 0)::int AS live_viewers,
                      coalesce(sum(d.watch_seconds), 0) AS watch_seconds,
                      coalesce(sum(d.replay_plays), 0)::int AS replay_plays,
                      coalesce(sum(d.replay_viewers), 0)::int AS replay_viewers,
                      coalesce(sum(d.messages), 0)::int AS messages, coalesce(sum(d.questions), 0)::int AS questions,
                      coalesce(sum(d.searches), 0)::int AS searches
               FROM generate_series((now() AT TIME ZONE 'UTC')::date - ($1::int - 1),
                                    (now() AT TIME ZONE 'UTC')::date, interval '1 day') AS g(day)
               LEFT JOIN analytics_room_days d ON d.day = g.day::date
               GROUP BY g.day ORDER BY g.day""", days)
    return Overview(
        live=Table("live_rooms", "Live now", ("room", "title", "episode", "started", "viewers", "nodes"),
                   [(r["slug"], r["title"], r["episode_id"], r["started_at"], r["viewers"],
                     " ".join(sorted(set(r["nodes"]) | ({r["node"]} if r["node"] else set()))))
                    for r in live]),
        sessions=Table("sessions", f"Sessions, last {days} days",
                       ("episode", "room", "title", "status", "started", "minutes", "unique_viewers",
                        "peak_viewers", "watch_hours", "replay_plays"),
                       [(r["id"], r["slug"], r["title"], r["status"], r["started_at"], round(r["duration"] / 60, 1),
                         r["live_viewers"], r["peak"], round(r["watch_seconds"] / 3600, 2), r["replay_plays"])
                        for r in sessions]),
        days=Table("days", f"Every room, last {days} days",
                   ("day", "live_viewers", "watch_hours", "replay_plays", "replay_viewers", "messages",
                    "questions", "searches"),
                   [(r["day"].isoformat(), r["live_viewers"], round(r["watch_seconds"] / 3600, 2), r["replay_plays"],
                     r["replay_viewers"], r["messages"], r["questions"], r["searches"])
                    for r in reversed(day_rows)]),     # newest first
        day_points=[(float(i), r["live_viewers"], r["watch_seconds"] / 3600) for i, r in enumerate(day_rows)],
        first_day=day_rows[0]["day"],
    )
