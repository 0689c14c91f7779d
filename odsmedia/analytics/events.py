"""Audience events, aggregated in memory as they happen and written in batches.

``AudienceRecorder`` is this node's ``AudienceSink``.  Nothing is written
per event: joins, leaves, chat and search counts add to per-minute and
per-day counters; every ``analytics.sample_interval`` the recorder samples
each room's concurrent live viewers, credits the watch time of every open
view (split exactly at minute boundaries), registers visitor hashes for
the live episode, and writes it all in a few multi-row upserts.  A failed
write keeps the batch for the next round, so nothing is counted twice or
lost to a Postgres hiccup (up to a bound).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import astuple, dataclass, field, fields
from datetime import date, datetime, timezone
from typing import Callable, Iterable

import asyncpg
from aiohttp import web

from . import store
from .visitors import Salts, Viewer, counted

log = logging.getLogger("odsmedia.analytics")

BUCKET_SECONDS = 10          # replay retention resolution (per 10 s of the episode)
HLS_IDLE = 30.0              # an HLS viewer without a beacon for this long has left
MAX_PENDING_VISITORS = 200_000


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def minute_of(ts: float) -> float:
    return math.floor(ts / 60.0) * 60.0


@dataclass
class MinuteCounts:
    joins: int = 0
    leaves: int = 0
    watch_seconds: float = 0.0
    messages: int = 0
    questions: int = 0
    answers: int = 0
    highlights: int = 0


@dataclass
class DayCounts:
    joins: int = 0
    watch_seconds: float = 0.0
    replay_plays: int = 0
    replay_seconds: float = 0.0
    messages: int = 0
    questions: int = 0
    searches: int = 0


@dataclass
class EpisodeReplay:
    plays: int = 0
    seconds: float = 0.0


@dataclass
class Batch:
    """Everything counted since the last write."""

    minutes: dict[tuple[int, float], MinuteCounts] = field(default_factory=lambda: defaultdict(MinuteCounts))
    days: dict[tuple[int, date], DayCounts] = field(default_factory=lambda: defaultdict(DayCounts))
    replays: dict[int, EpisodeReplay] = field(default_factory=lambda: defaultdict(EpisodeReplay))
    buckets: dict[tuple[int, int], int] = field(default_factory=lambda: defaultdict(int))
    samples: list[tuple[int, float, int]] = field(default_factory=list)
    # (day, room_id, episode_id, audience, viewer): hashed at write time with the day's salt.
    visitors: set[tuple[date, int, int, str, Viewer]] = field(default_factory=set)

    def empty(self) -> bool:
        return not (self.minutes or self.days or self.replays or self.buckets or self.samples or self.visitors)

    def merge(self, other: "Batch") -> None:
        """Adds ``other`` (counted after this batch) into this one."""
        for key, counts in other.minutes.items():
            _add(self.minutes[key], counts)
        for key, counts in other.days.items():
            _add(self.days[key], counts)
        for key, counts in other.replays.items():
            _add(self.replays[key], counts)
        for key, plays in other.buckets.items():
            self.buckets[key] += plays
        self.samples.extend(other.samples)     # later samples win when written
        if len(self.visitors) < MAX_PENDING_VISITORS:
            self.visitors |= other.visitors


def _add(into, counts) -> None:
    for f in fields(counts):
        setattr(into, f.name, getattr(into, f.name) + getattr(counts, f.name))


class OpenView:
    """A live viewer being counted; the recorder credits its watch time as it goes."""

    __slots__ = ("recorder", "room_id", "viewer", "via", "since", "until", "seen", "episodes", "started", "ended")

    def __init__(self, recorder: "AudienceRecorder", room_id: int, viewer: Viewer, via: str) -> None:
        self.recorder = recorder
        self.room_id = room_id
        self.viewer = viewer
        self.via = via
        self.since = 0.0                    # when it started
        self.until = 0.0                    # when it ended
        self.seen = 0.0                     # HLS: its player's last beacon
        self.episodes: set[int] = set()     # live episodes it was counted in
        self.started = False
        self.ended = False

    def start(self) -> None:
        if not self.started and not self.ended:
            self.started = True
            self.recorder._view_started(self)

    def end(self) -> None:
        if self.started and not self.ended:
            self.ended = True
            self.recorder._view_ended(self)


class RoomAudience:
    """The open views of one room, credited together so a sample costs O(rooms + newcomers), not
    O(viewers): every view present at the last sample shares [credited, now]; only views that
    joined since are credited one by one."""

    __slots__ = ("views", "hls", "joined", "unregistered", "credited", "episode")

    def __init__(self, now: float) -> None:
        self.views: set[OpenView] = set()       # WebRTC: joined and left through the SFU
        # HLS players of the live episode, known by their beacons (no connection to watch):
        # their watch time is the playback their beacons report, they leave when beacons stop.
        self.hls: dict[Viewer, OpenView] = {}
        self.joined: list[OpenView] = []        # started since ``credited``
        self.unregistered: list[OpenView] = []  # started since the live episode was last looked up
        self.credited = now
        self.episode: int | None = None         # the live episode every view here is counted in


class AudienceRecorder:
    """This node's audience sink (see ``sink.AudienceSink``), at ``app[AUDIENCE_RECORDER]``."""

    def __init__(self, db: asyncpg.Pool, *, node: str, trusted_proxies: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.time,
                 live_rooms: Callable[[], Iterable[int]] = tuple) -> None:
        self.db = db
        self.node = node
        self.trusted_proxies = trusted_proxies
        self.clock = clock
        # Room ids live on this node (sampled even with nobody watching, so charts show the zeros).
        self.live_rooms = live_rooms
        self.salts = Salts(db)
        self.rooms: dict[int, RoomAudience] = {}
        # Views that ended since the last tick, still to be counted in their room's live episode.
        self.ended: list[OpenView] = []
        self.batch = Batch()

    # --- the sink -------------------------------------------------------------------------

    def viewer(self, request: web.Request, subject: str) -> Viewer | None:
        return Viewer.of(request, subject, self.trusted_proxies)

    def live_view(self, request: web.Request, room_id: int, subject: str, role: str,
                  via: str) -> OpenView | None:
        if role == "host":
            return None   # the audience is who watches, not who broadcasts
        viewer = self.viewer(request, subject)
        return None if viewer is None else OpenView(self, room_id, viewer, via)

    def start_view(self, room_id: int, viewer: Viewer, via: str) -> OpenView:
        view = OpenView(self, room_id, viewer, via)
        view.start()
        return view

    def _view_started(self, view: OpenView) -> None:
        now = self.clock()
        view.since = now
        room_id = view.room_id
        room = self.rooms.get(room_id)
        if room is None:
            room = self.rooms[room_id] = RoomAudience(now)
        room.views.add(view)
        room.joined.append(view)
        room.unregistered.append(view)
        self.batch.minutes[(room_id, minute_of(now))].joins += 1
        self.batch.days[(room_id, _utc(now).date())].joins += 1
        self.batch.visitors.add((_utc(now).date(), room_id, 0, "live", view.viewer))

    def _view_ended(self, view: OpenView) -> None:
        now = self.clock()
        view.until = now
        room = self.rooms[view.room_id]
        self._credit(view.room_id, max(view.since, room.credited), now, 1)
        self.batch.minutes[(view.room_id, minute_of(now))].leaves += 1
        self.ended.append(view)
        room.views.discard(view)
        if not room.views and not room.hls:
            del self.rooms[view.room_id]

    def chat_item(self, request: web.Request, room_id: int, kind: str) -> None:
        if not counted(request.headers):
            return
        now = self.clock()
        minute = self.batch.minutes[(room_id, minute_of(now))]
        day = self.batch.days[(room_id, _utc(now).date())]
        if kind == "message":
            minute.messages += 1
            day.messages += 1
        elif kind == "question":
            minute.questions += 1
            day.questions += 1
        elif kind == "highlight":
            minute.highlights += 1

    def question_answered(self, request: web.Request, room_id: int) -> None:
        if not counted(request.headers):
            return
        self.batch.minutes[(room_id, minute_of(self.clock()))].answers += 1

    def search(self, request: web.Request, room_id: int) -> None:
        if not counted(request.headers):
            return
        self.batch.days[(room_id, _utc(self.clock()).date())].searches += 1

    # --- replay (reported by the replay page's beacon, see routes) ----------------------------

    def hls_beacon(self, room_id: int, episode_id: int, viewer: Viewer, seconds: float) -> None:
        """A player of the live episode over HLS reported ``seconds`` more of playback."""
        now = self.clock()
        room = self.rooms.get(room_id)
        if room is None:
            room = self.rooms[room_id] = RoomAudience(now)
        view = room.hls.get(viewer)
        if view is None:
            view = room.hls[viewer] = OpenView(self, room_id, viewer, "hls")
            view.started, view.since = True, now
            day = _utc(now).date()
            self.batch.minutes[(room_id, minute_of(now))].joins += 1
            self.batch.days[(room_id, day)].joins += 1
            self.batch.visitors.add((day, room_id, 0, "live", viewer))
        if episode_id not in view.episodes:
            view.episodes.add(episode_id)
            self.batch.visitors.add((_utc(now).date(), room_id, episode_id, "live", viewer))
        view.seen = now
        self._credit(room_id, now - seconds, now, 1)

    def hls_poll(self, request: web.Request, room_id: int, episode_id: int, subject: str) -> None:
        """A live LL-HLS playlist poll: the player is present; the time since its previous
        poll (at most ``HLS_IDLE``, after which it had left) is its watch time."""
        viewer = self.viewer(request, subject)
        if viewer is None:
            return
        room = self.rooms.get(room_id)
        view = room.hls.get(viewer) if room is not None else None
        seconds = 0.0 if view is None else min(max(0.0, self.clock() - view.seen), HLS_IDLE)
        self.hls_beacon(room_id, episode_id, viewer, seconds)

    def _expire_hls(self, room_id: int, room: RoomAudience, now: float) -> None:
        for viewer, view in list(room.hls.items()):
            if now - view.seen > HLS_IDLE:
                del room.hls[viewer]
                view.ended, view.until = True, view.seen
                self.batch.minutes[(room_id, minute_of(view.seen))].leaves += 1

    def replay_play(self, room_id: int, episode_id: int, viewer: Viewer) -> None:
        now = self.clock()
        day = _utc(now).date()
        self.batch.replays[episode_id].plays += 1
        self.batch.days[(room_id, day)].replay_plays += 1
        self.batch.visitors.add((day, room_id, 0, "replay", viewer))
        self.batch.visitors.add((day, room_id, episode_id, "replay", viewer))

    def replay_progress(self, room_id: int, episode_id: int, seconds: float, new_buckets: Iterable[int]) -> None:
        """``seconds`` more watched in one play; ``new_buckets`` this play reached for the first time."""
        self.batch.replays[episode_id].seconds += seconds
        self.batch.days[(room_id, _utc(self.clock()).date())].replay_seconds += seconds
        for bucket in new_buckets:
            self.batch.buckets[(episode_id, bucket)] += 1

    # --- sampling and writing ---------------------------------------------------------------

    def _credit(self, room_id: int, start: float, end: float, viewers: int) -> None:
        """Adds ``viewers`` x [start, end) of watch time, split at minute boundaries."""
        while start < end and viewers:
            minute = minute_of(start)
            stop = min(end, minute + 60.0)
            self.batch.minutes[(room_id, minute)].watch_seconds += viewers * (stop - start)
            self.batch.days[(room_id, _utc(minute).date())].watch_seconds += viewers * (stop - start)
            start = stop

    def _credit_room(self, room_id: int, room: RoomAudience, now: float) -> None:
        newcomers = [v for v in room.joined if not v.ended]
        self._credit(room_id, room.credited, now, len(room.views) - len(newcomers))
        for view in newcomers:
            self._credit(room_id, view.since, now, 1)
        room.joined = []
        room.credited = now

    def sample(self, interval: float) -> float:
        """Concurrent viewers per room now (aligned to the interval), crediting watch time."""
        now = self.clock()
        at = math.floor(now / interval) * interval
        for room_id in set(self.live_rooms()) | set(self.rooms):
            room = self.rooms.get(room_id)
            viewers = 0
            if room is not None:
                self._credit_room(room_id, room, now)
                self._expire_hls(room_id, room, now)
                viewers = len(room.views) + len(room.hls)
                if not viewers:
                    del self.rooms[room_id]
            self.batch.samples.append((room_id, at, viewers))
        return at

    async def register_episodes(self) -> None:
        """Counts every view once in its room's live episode (a viewer may arrive before it starts):
        everyone when a room's live episode changes, otherwise only who came or went since."""
        ended, self.ended = self.ended, []
        room_ids = set(self.rooms) | {v.room_id for v in ended}
        if not room_ids:
            return
        rows = await self.db.fetch(
            "SELECT room_id, id, started_at FROM episodes WHERE status = 'live' AND room_id = ANY($1::bigint[])",
            list(room_ids))
        live = {r["room_id"]: r["id"] for r in rows}
        began = {r["id"]: r["started_at"].timestamp() for r in rows}
        day = _utc(self.clock()).date()

        def count(view: OpenView, episode_id: int | None) -> None:
            if episode_id is not None and episode_id not in view.episodes:
                view.episodes.add(episode_id)
                self.batch.visitors.add((day, view.room_id, episode_id, "live", view.viewer))

        for room_id, room in self.rooms.items():
            episode_id = live.get(room_id)
            everyone = episode_id != room.episode
            room.episode = episode_id
            for view in (room.views if everyone else room.unregistered):
                count(view, episode_id)
            room.unregistered = []
        for view in ended:      # gone before this lookup: counted if they saw the episode
            episode_id = live.get(view.room_id)
            if episode_id is not None and view.until >= began[episode_id]:
                count(view, episode_id)

    async def tick(self, interval: float) -> None:
        self.sample(interval)
        await self.register_episodes()
        await self.flush()

    async def flush(self) -> None:
        """Writes the batch; on failure it is merged back for the next try."""
        batch, self.batch = self.batch, Batch()
        if batch.empty():
            return
        try:
            await self._write(batch)
        except BaseException:
            batch.merge(self.batch)
            self.batch = batch
            raise

    async def close(self) -> None:
        now = self.clock()
        for room_id, room in list(self.rooms.items()):
            self._credit_room(room_id, room, now)
        await self.flush()

    async def _write(self, batch: Batch) -> None:
        visitors: dict[tuple, None] = {}
        for day, room_id, episode_id, audience, viewer in batch.visitors:
            salt = await self.salts.for_day(day)
            visitors[(day, room_id, episode_id, audience, viewer.key(salt, room_id))] = None
        latest = {(room_id, at): viewers for room_id, at, viewers in batch.samples}
        await store.write(
            self.db, node=self.node, visitors=list(visitors),
            minutes=[(room_id, _utc(minute), *astuple(c)) for (room_id, minute), c in batch.minutes.items()],
            days=[(room_id, day, *astuple(c)) for (room_id, day), c in batch.days.items()],
            samples=[(room_id, _utc(at), viewers) for (room_id, at), viewers in latest.items()],
            replays=[(episode_id, r.plays, r.seconds) for episode_id, r in batch.replays.items()],
            buckets=[(episode_id, bucket, plays) for (episode_id, bucket), plays in batch.buckets.items()])


AUDIENCE_RECORDER: web.AppKey[AudienceRecorder] = web.AppKey("audience_recorder")
