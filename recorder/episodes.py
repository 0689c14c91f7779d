"""Episode and segment rows in Postgres.

The owner of the ``episodes``, ``segments``, ``episode_renditions`` and ``episode_purges`` tables
(a trigger queues a deleted episode's storage key in the last one; the purge
loop removes its media and then the queue row): the recorder, replay,
chat (which episode is live, which room an episode is of) and the CLI read
and write them through these functions.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg

from odsmedia.errors import ApiError
from odsmedia.storage import transaction

STATUSES = ("live", "finalizing", "ready", "interrupted", "failed")


@dataclass(frozen=True, slots=True)
class Episode:
    id: int
    room_id: int
    room_slug: str
    title: str
    status: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    duration: float
    segment_count: int
    storage_key: str
    node: str

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> "Episode":
        return cls(
            id=row["id"], room_id=row["room_id"], room_slug=row["slug"], title=row["title"],
            status=row["status"], started_at=row["started_at"], ended_at=row["ended_at"],
            duration=row["duration"], segment_count=row["segment_count"],
            storage_key=row["storage_key"], node=row["node"],
        )

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "duration": round(self.duration, 3),
            "segment_count": self.segment_count,
        }


@dataclass(frozen=True, slots=True)
class SegmentRow:
    seq: int
    name: str
    init_name: str | None
    discontinuity: bool
    duration: float
    start_offset: float
    size_bytes: int
    rendition: str = ""      # '' = the first writer (index.m3u8); else the file prefix


@dataclass(frozen=True, slots=True)
class Rendition:
    """One recorded video source (with the episode's audio muxed in)."""

    rendition: str           # '' for the first writer, else its file prefix
    label: str               # screen, camera, camera-2, ...
    source: str
    video_codec: str = ""    # RFC 6381, e.g. avc1.42e01f
    audio_codec: str = ""    # opus | mp4a.40.2 | ''
    width: int = 0
    height: int = 0

    @property
    def playlist(self) -> str:
        return f"{self.rendition}.m3u8" if self.rendition else "index.m3u8"


_SELECT = """SELECT e.*, r.slug FROM episodes e JOIN rooms r ON r.id = e.room_id"""


async def create(db: asyncpg.Pool, room_id: int, *, title: str, storage_key: str, node: str) -> Episode:
    """A new live episode.  A live episode of the same room left by another node
    (it crashed and has not come back) is marked interrupted first: one room
    records on one node, and the unique index allows one live episode per room."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            """UPDATE episodes SET status = 'interrupted', ended_at = coalesce(ended_at, now())
               WHERE room_id = $1 AND status IN ('live', 'finalizing')""",
            room_id,
        )
        episode_id = await conn.fetchval(
            """INSERT INTO episodes (room_id, title, storage_key, node) VALUES ($1, $2, $3, $4)
               RETURNING id""",
            room_id, title[:200], storage_key, node,
        )
        row = await conn.fetchrow(_SELECT + " WHERE e.id = $1", episode_id)
    return Episode.from_row(row)


async def get(db: asyncpg.Pool | asyncpg.Connection, episode_id: int) -> Episode | None:
    row = await db.fetchrow(_SELECT + " WHERE e.id = $1", episode_id)
    return Episode.from_row(row) if row else None


async def for_room(db: asyncpg.Pool, room_id: int, *, limit: int = 100,
                   before: tuple[dt.datetime, int] | None = None) -> list[Episode]:
    """Newest first; ``before`` = (started_at, id) of the last item of the previous page."""
    if before is None:
        rows = await db.fetch(
            _SELECT + " WHERE e.room_id = $1 ORDER BY e.started_at DESC, e.id DESC LIMIT $2", room_id, limit
        )
    else:
        rows = await db.fetch(
            _SELECT + """ WHERE e.room_id = $1 AND (e.started_at, e.id) < ($3, $4)
                          ORDER BY e.started_at DESC, e.id DESC LIMIT $2""",
            room_id, limit, before[0], before[1],
        )
    return [Episode.from_row(r) for r in rows]


async def unfinished_on_node(db: asyncpg.Pool, node: str) -> list[Episode]:
    rows = await db.fetch(_SELECT + " WHERE e.node = $1 AND e.status IN ('live', 'finalizing') ORDER BY e.id", node)
    return [Episode.from_row(r) for r in rows]


async def add_segment(db: asyncpg.Pool | asyncpg.Connection, episode_id: int, segment: SegmentRow) -> None:
    """The segment row and the episode's totals, together."""
    async with transaction(db) as conn:
        await conn.execute(
            """INSERT INTO segments (episode_id, seq, name, init_name, discontinuity, duration,
                                     start_offset, size_bytes, rendition)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            episode_id, segment.seq, segment.name, segment.init_name, segment.discontinuity,
            segment.duration, segment.start_offset, segment.size_bytes, segment.rendition,
        )
        # segment_count counts the first rendition's (index.m3u8's) segments; the duration
        # is the episode timeline's end, whichever rendition reaches furthest.
        await conn.execute(
            """UPDATE episodes SET segment_count = segment_count + (CASE WHEN $3 = '' THEN 1 ELSE 0 END),
                                   duration = greatest(duration, $2)
               WHERE id = $1""",
            episode_id, segment.start_offset + segment.duration, segment.rendition,
        )


async def set_rendition(db: asyncpg.Pool | asyncpg.Connection, episode_id: int, rendition: Rendition) -> None:
    """Insert or update what a rendition carries (its resolution may change with a new period)."""
    await db.execute(
        """INSERT INTO episode_renditions (episode_id, rendition, label, source, video_codec, audio_codec,
                                           width, height)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (episode_id, rendition) DO UPDATE SET
               video_codec = EXCLUDED.video_codec, audio_codec = EXCLUDED.audio_codec,
               width = EXCLUDED.width, height = EXCLUDED.height""",
        episode_id, rendition.rendition, rendition.label, rendition.source, rendition.video_codec,
        rendition.audio_codec, rendition.width, rendition.height,
    )


async def renditions(db: asyncpg.Pool | asyncpg.Connection, episode_id: int) -> list[Rendition]:
    """The episode's renditions, the first writer's first (none for episodes older than renditions)."""
    rows = await db.fetch(
        """SELECT rendition, label, source, video_codec, audio_codec, width, height
           FROM episode_renditions WHERE episode_id = $1 ORDER BY rendition""",
        episode_id,
    )
    return [Rendition(**dict(r)) for r in rows]


@dataclass(frozen=True, slots=True)
class RenditionStats:
    start: float            # its first segment's start on the episode timeline (seconds)
    peak_bps: int           # the highest segment bit rate (HLS BANDWIDTH)
    average_bps: int


async def rendition_stats(db: asyncpg.Pool | asyncpg.Connection, episode_id: int) -> dict[str, RenditionStats]:
    """Per rendition, from its listed segments: where it starts, and its bit rates."""
    rows = await db.fetch(
        """SELECT rendition, min(start_offset) AS start,
                  max(size_bytes * 8 / greatest(duration, 0.001)) AS peak,
                  sum(size_bytes) * 8 / greatest(sum(duration), 0.001) AS average
           FROM segments WHERE episode_id = $1 GROUP BY rendition""",
        episode_id,
    )
    return {r["rendition"]: RenditionStats(r["start"], int(r["peak"]), int(r["average"])) for r in rows}


# A screen share that starts later than this after the episode's first picture does not lead:
# its playlist begins where it began, so a player driven by it could not reach what came before
# (a host who opens with the camera and shares the screen a minute in).  Two seconds cover the
# sources' own start (each waits up to 2 s for its first sender report).
SCREEN_LEAD_SECONDS = 2.0


def main_rendition(renditions: list[Rendition], stats: dict[str, RenditionStats]) -> Rendition | None:
    """What a player shows large and is driven by: the (first) screen share when it starts with
    the episode (``stats``: each rendition's first segment's offset), else the rendition that
    starts first (the first rendition on a tie)."""
    if not renditions:
        return None

    def start(r: Rendition) -> float:
        s = stats.get(r.rendition)
        return s.start if s is not None else 0.0

    first = min(renditions, key=lambda r: (start(r), r.rendition != ""))
    screens = sorted((r for r in renditions if r.source == "screen"), key=lambda r: (len(r.label), r.label))
    if screens and start(screens[0]) - start(first) <= SCREEN_LEAD_SECONDS:
        return screens[0]
    return first


async def segments(db: asyncpg.Pool | asyncpg.Connection, episode_id: int,
                   rendition: str | None = "") -> list[SegmentRow]:
    """One rendition's segments in order (the first writer's, index.m3u8, by default);
    ``rendition=None``: every rendition's (by rendition, then in order)."""
    rows = await db.fetch(
        """SELECT seq, name, init_name, discontinuity, duration, start_offset, size_bytes, rendition
           FROM segments WHERE episode_id = $1 AND ($2::text IS NULL OR rendition = $2)
           ORDER BY rendition, seq""",
        episode_id, rendition,
    )
    return [SegmentRow(**dict(r)) for r in rows]


async def segment_by_name(db: asyncpg.Pool, episode_id: int, name: str) -> SegmentRow | None:
    row = await db.fetchrow(
        """SELECT seq, name, init_name, discontinuity, duration, start_offset, size_bytes, rendition
           FROM segments WHERE episode_id = $1 AND name = $2""",
        episode_id, name,
    )
    return SegmentRow(**dict(row)) if row else None


async def init_known(db: asyncpg.Pool, episode_id: int, name: str) -> bool:
    return bool(await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM segments WHERE episode_id = $1 AND init_name = $2)", episode_id, name
    ))


async def set_status(db: asyncpg.Pool | asyncpg.Connection, episode_id: int, status: str, *,
                     ended: bool = False) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown episode status {status!r}")
    await db.execute(
        """UPDATE episodes SET status = $2,
                  ended_at = CASE WHEN $3 THEN coalesce(ended_at, now()) ELSE ended_at END
           WHERE id = $1""",
        episode_id, status, ended,
    )


async def delete(db: asyncpg.Pool, episode_id: int) -> Episode | None:
    """Remove the episode and (by cascade) its segment rows; returns what was removed."""
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(_SELECT + " WHERE e.id = $1 FOR UPDATE OF e", episode_id)
        if row is None:
            return None
        if row["status"] in ("live", "finalizing"):
            raise ApiError(409, "episode_live", "the episode is still being recorded")
        await conn.execute("DELETE FROM episodes WHERE id = $1", episode_id)
    return Episode.from_row(row)


async def set_started(db: asyncpg.Pool | asyncpg.Connection, episode_id: int, started: dt.datetime) -> None:
    """Replay time zero: the first segment's start on the wall clock."""
    await db.execute("UPDATE episodes SET started_at = $2 WHERE id = $1", episode_id, started)


async def discard(db: asyncpg.Pool | asyncpg.Connection, episode_id: int) -> None:
    """Remove an episode that captured nothing (no status check: the recorder owns it)."""
    await db.execute("DELETE FROM episodes WHERE id = $1", episode_id)


async def recovered(db: asyncpg.Pool | asyncpg.Connection, episode_id: int, status: str, *,
                    duration: float, segment_count: int) -> None:
    """Crash recovery's verdict: status and totals from the segment rows that survived."""
    await db.execute(
        """UPDATE episodes SET status = $2, ended_at = coalesce(ended_at, now()), duration = $3,
                  segment_count = $4 WHERE id = $1""",
        episode_id, status, duration, segment_count,
    )


async def known_storage_keys(db: asyncpg.Pool | asyncpg.Connection, keys: list[str]) -> set[str]:
    return {r["storage_key"] for r in await db.fetch(
        "SELECT storage_key FROM episodes WHERE storage_key = ANY($1::text[])", keys)}


async def live_id(db: asyncpg.Pool | asyncpg.Connection, room_id: int) -> int | None:
    """The room's episode being recorded now, if any."""
    return await db.fetchval("SELECT id FROM episodes WHERE room_id = $1 AND status = 'live'", room_id)


async def live_room_ids(db: asyncpg.Pool | asyncpg.Connection) -> set[int]:
    """Rooms with a session being recorded now, on any node (the home page's LIVE)."""
    return {r["room_id"] for r in await db.fetch("SELECT room_id FROM episodes WHERE status = 'live'")}


async def room_slug(db: asyncpg.Pool | asyncpg.Connection, episode_id: int) -> str | None:
    """The slug of the room an episode belongs to (None: no such episode)."""
    return await db.fetchval(
        "SELECT r.slug FROM episodes e JOIN rooms r ON r.id = e.room_id WHERE e.id = $1", episode_id)


async def purges_due(db: asyncpg.Pool | asyncpg.Connection, limit: int = 100) -> list[str]:
    """Storage keys of deleted episodes whose media may still be in the store (oldest first)."""
    rows = await db.fetch("SELECT storage_key FROM episode_purges ORDER BY queued_at LIMIT $1", limit)
    return [r["storage_key"] for r in rows]


async def purged(db: asyncpg.Pool | asyncpg.Connection, storage_key: str) -> None:
    """The media is gone: drop the queue row (unless an episode with the key came back, it never does)."""
    await db.execute("DELETE FROM episode_purges WHERE storage_key = $1", storage_key)


async def expire(db: asyncpg.Pool | asyncpg.Connection, days: int, limit: int = 500) -> int:
    """Retention: delete finished episodes that ended more than ``days`` ago (their
    purges are queued by the trigger); returns how many."""
    deleted = await db.fetch(
        """DELETE FROM episodes WHERE id IN (
               SELECT id FROM episodes
               WHERE status NOT IN ('live', 'finalizing') AND ended_at < now() - make_interval(days => $1)
               ORDER BY ended_at LIMIT $2)
           RETURNING id""",
        days, limit,
    )
    return len(deleted)
