"""The replay page's beacon: plays, watch time and audience retention per 10 s.

For an episode still being recorded the same beacon is a live HLS viewer's
heartbeat: it joins the room's live audience with its first beacon, its
reported playback is its watch time, and it leaves when beacons stop.

POST /api/analytics/replay  {"episode": id, "play": true?, "seconds": s, "buckets": [b, ...]}

The replay page (first-party script, same origin) reports when a play starts
and, every few seconds of playback, the seconds watched and the 10 s
buckets of the episode this play reached for the first time.  The server
checks that the caller may watch the episode (the same gate as the
playlist), bounds every number, and honours DNT / Sec-GPC by counting
nothing.  Nothing identifying is stored: plays and buckets are counters,
the visitor is the daily-salted hash.
"""

from __future__ import annotations

import math
import time

from aiohttp import web

from ..errors import ApiError, json_response, read_json
from ..gate import Entry
from ..keys import DB, GATE
from .events import AUDIENCE_RECORDER, BUCKET_SECONDS

BEACON_GUARD: web.AppKey["BeaconGuard"] = web.AppKey("replay_beacon_guard")

MAX_SECONDS = 60.0      # one beacon covers at most a minute of playback
MAX_BUCKETS = 12
MIN_INTERVAL = 1.0      # seconds between two beacons of one viewer for one episode
FIRST_BUDGET = 15.0     # the first beacon of a play reports after at most 10 s of playback
SLACK = 5.0
FORGET_AFTER = 600.0


class BeaconGuard:
    """Bounds what one viewer can add: a beacon a second per episode, and no more seconds
    watched than wall-clock time since their previous beacon (plus slack).  In memory only,
    keyed like the visitor hash before hashing, and forgotten after ten quiet minutes."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.last: dict[tuple, float] = {}

    def allow(self, key: tuple, now: float, seconds: float) -> float | None:
        """The seconds to count, or None when the beacon comes too soon."""
        previous = self.last.get(key)
        if previous is not None and now - previous < MIN_INTERVAL:
            return None
        self.last[key] = now
        budget = FIRST_BUDGET if previous is None or now - previous > FORGET_AFTER else now - previous + SLACK
        return min(seconds, budget)

    def prune(self, now: float) -> None:
        if len(self.last) > 1000:
            self.last = {k: t for k, t in self.last.items() if now - t <= FORGET_AFTER}


def _episode_id(body: dict) -> int:
    value = body.get("episode")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, "invalid_episode", "episode must be a positive integer")
    return value


def _seconds(body: dict) -> float:
    value = body.get("seconds", 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_SECONDS \
            or math.isnan(value):
        raise ApiError(400, "invalid_seconds", f"seconds must be 0-{MAX_SECONDS:g}")
    return float(value)


def _buckets(body: dict, last_bucket: int) -> list[int]:
    value = body.get("buckets", [])
    if not isinstance(value, list) or len(value) > MAX_BUCKETS or not all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= last_bucket for b in value):
        raise ApiError(400, "invalid_buckets",
                       f"buckets must be at most {MAX_BUCKETS} integers 0-{last_bucket} (10 s of the episode each)")
    return sorted(set(value))


async def beacon(request: web.Request) -> web.Response:
    recorder = request.app.get(AUDIENCE_RECORDER)
    body = await read_json(request)
    episode_id = _episode_id(body)
    play = body.get("play", False)
    if not isinstance(play, bool):
        raise ApiError(400, "invalid_play", "play must be true or false")
    seconds = _seconds(body)
    row = await request.app[DB].fetchrow(
        "SELECT e.room_id, r.slug, e.duration, e.started_at, e.status FROM episodes e JOIN rooms r ON r.id = e.room_id "
        "WHERE e.id = $1", episode_id)
    if row is None:
        raise ApiError(404, "episode_not_found", "no such episode")
    # While live the recording grows: the bound is what exists by now.
    length = row["duration"]
    if row["status"] == "live":
        length = max(length, time.time() - row["started_at"].timestamp())
    buckets = _buckets(body, int(length // BUCKET_SECONDS) + 1)
    admission = await request.app[GATE].admit(request, row["slug"], Entry.REPLAY)
    viewer = recorder.viewer(request, admission.identity.subject) if recorder is not None else None
    if viewer is None:      # opted out, a bot, or analytics off
        return json_response({"counted": False})
    guard = request.app[BEACON_GUARD]
    now = guard.clock()
    guard.prune(now)
    counted = guard.allow((viewer, episode_id), now, seconds)
    if counted is None:
        raise ApiError(429, "too_many_beacons", f"at most one beacon per {MIN_INTERVAL:g} s per episode")
    seconds = counted
    if row["status"] == "live":
        # Playing the episode while it is recorded is watching the session live, over HLS.
        recorder.hls_beacon(row["room_id"], episode_id, viewer, seconds)
        return json_response({"counted": True})
    if play:
        recorder.replay_play(row["room_id"], episode_id, viewer)
    recorder.replay_progress(row["room_id"], episode_id, seconds, buckets)
    return json_response({"counted": True})
