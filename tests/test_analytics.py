"""Audience analytics: synthetic sessions give exact aggregates; no cookies, no addresses, no linking across days."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from conftest import make_config, refusal
from odsmedia.analytics import store
from odsmedia.analytics.events import AUDIENCE_RECORDER, AudienceRecorder
from odsmedia.analytics.replay import BEACON_GUARD
from odsmedia.analytics.sink import opted_out
from odsmedia.analytics.visitors import Viewer, browser_family
from odsmedia.app import make_app
from test_chat_support import ChatSocket

CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")
FIREFOX_ANDROID = "Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0"


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def at(self, start: datetime, seconds: float) -> None:
        self.now = start.timestamp() + seconds


def test_browser_family_and_opt_out():
    assert browser_family(CHROME) == "chrome"
    assert browser_family(FIREFOX_ANDROID) == "firefox-mobile"
    assert browser_family(CHROME.replace("Chrome/131.0.0.0 Safari", "Chrome/131.0.0.0 Safari/537.36 Edg")) == "edge"
    assert browser_family("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) AppleWebKit Version/17.0 Mobile Safari/604.1") \
        == "safari-mobile"
    assert browser_family("Googlebot/2.1") == "bot" and browser_family("") == "bot"
    assert opted_out({"DNT": "1"}) and opted_out({"Sec-GPC": "1"})
    assert not opted_out({"DNT": "0"}) and not opted_out({})


async def _episode(db, room, started: datetime, ended: datetime | None = None) -> int:
    return await db.fetchval(
        "INSERT INTO episodes (room_id, storage_key, started_at, ended_at, status, duration) "
        "VALUES ($1, 'k', $2, $3, $4, $5) RETURNING id",
        room.id, started, ended, "live" if ended is None else "ready",
        (ended - started).total_seconds() if ended else 0)


async def test_a_synthetic_session_gives_exactly_the_expected_aggregates(db, room_factory):
    room = await room_factory()
    t0 = datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc)
    clock = Clock(t0)
    episode = await _episode(db, room, t0)
    live = {room.id}
    recorder = AudienceRecorder(db, node="n1", clock=clock, live_rooms=lambda: live)
    ada = Viewer("GB", "chrome", "v:ada")
    bob = Viewer("DE", "firefox", "a:7")
    ada_again = Viewer("GB", "chrome", "v:ada")     # the same person, back later: one unique viewer

    async def tick_until(seconds: float) -> None:
        # Samples every 10 s of the session, like the background loop.
        while clock.now + 10 <= t0.timestamp() + seconds:
            clock.now += 10 - (clock.now % 10)
            await recorder.tick(10)

    clock.at(t0, 5)
    a = recorder.start_view(room.id, ada, "webrtc")
    await tick_until(30)
    clock.at(t0, 30)
    b = recorder.start_view(room.id, bob, "webrtc")
    await tick_until(90)
    clock.at(t0, 90)
    b.end()
    b.end()     # idempotent
    await tick_until(125)
    clock.at(t0, 125)
    a.end()
    await tick_until(200)
    clock.at(t0, 200)
    c = recorder.start_view(room.id, ada_again, "webrtc")
    await tick_until(230)
    clock.at(t0, 230)
    c.end()
    await tick_until(240)
    await recorder.flush()

    samples = [(r["at"] - t0).total_seconds() for r in await db.fetch(
        "SELECT at FROM analytics_concurrency WHERE room_id = $1 ORDER BY at", room.id)]
    assert samples == [float(s) for s in range(10, 241, 10)]
    viewers = [r["viewers"] for r in await db.fetch(
        "SELECT viewers FROM analytics_concurrency WHERE room_id = $1 ORDER BY at", room.id)]
    # 10-30: Ada (Bob joins just after the 30 s sample); 40-90: Ada and Bob; 100-120: Ada;
    # 130-200: nobody (Ada is back just after the 200 s sample); 210-230: Ada again; 240: nobody.
    assert viewers == [1] * 3 + [2] * 6 + [1] * 3 + [0] * 8 + [1] * 3 + [0]

    minutes = {(r["minute"] - t0).total_seconds() // 60: r for r in await db.fetch(
        "SELECT * FROM analytics_room_minutes WHERE room_id = $1", room.id)}
    # Watch time split exactly at minute boundaries: Ada 5-125 s, Bob 30-90 s, Ada 200-230 s.
    assert {m: r["watch_seconds"] for m, r in minutes.items()} == {0: 85.0, 1: 90.0, 2: 5.0, 3: 30.0}
    assert {m: (r["joins"], r["leaves"]) for m, r in minutes.items()} == {0: (2, 0), 1: (0, 1), 2: (0, 1),
                                                                          3: (1, 1)}
    day = await db.fetchrow("SELECT * FROM analytics_room_days WHERE room_id = $1", room.id)
    assert (day["day"], day["joins"], day["watch_seconds"], day["live_viewers"]) == (t0.date(), 3, 210.0, 2)
    assert await db.fetchval("SELECT live_viewers FROM analytics_episodes WHERE episode_id = $1", episode) == 2
    # What is kept per visitor is a 16-byte hash, nothing else.
    hashes = await db.fetch("SELECT visitor FROM analytics_visitors WHERE room_id = $1", room.id)
    assert hashes and all(len(h["visitor"]) == 16 for h in hashes)


async def test_a_short_view_between_samples_still_counts_in_the_episode(db, room_factory):
    room = await room_factory()
    t0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    clock = Clock(t0)
    episode = await _episode(db, room, t0)
    recorder = AudienceRecorder(db, node="n1", clock=clock)
    clock.at(t0, 1)
    view = recorder.start_view(room.id, Viewer("FR", "safari", "v:x"), "webrtc")
    clock.at(t0, 4)
    view.end()
    clock.at(t0, 10)
    await recorder.tick(10)
    assert await db.fetchval("SELECT live_viewers FROM analytics_episodes WHERE episode_id = $1", episode) == 1
    assert await db.fetchval("SELECT watch_seconds FROM analytics_room_minutes WHERE room_id = $1", room.id) == 3.0


async def test_unique_viewers_across_two_days_do_not_link(db, room_factory):
    room = await room_factory()
    today = datetime.now(timezone.utc).replace(hour=9, minute=0, second=0, microsecond=0)
    day1, day2 = today - timedelta(days=2), today - timedelta(days=1)
    clock = Clock(day1)
    recorder = AudienceRecorder(db, node="n1", clock=clock)
    same = Viewer("GB", "chrome", "a:42")
    for start in (day1, day2):
        clock.at(start, 0)
        view = recorder.start_view(room.id, same, "webrtc")
        clock.at(start, 60)
        view.end()
        await recorder.flush()
    days = {r["day"]: r["live_viewers"] for r in await db.fetch(
        "SELECT day, live_viewers FROM analytics_room_days WHERE room_id = $1", room.id)}
    assert days == {day1.date(): 1, day2.date(): 1}
    rows = await db.fetch("SELECT day, visitor FROM analytics_visitors WHERE room_id = $1 ORDER BY day", room.id)
    assert [r["day"] for r in rows] == [day1.date(), day2.date()]
    # Different salts: the same person's two hashes share nothing that links them.
    assert rows[0]["visitor"] != rows[1]["visitor"]
    salts = await db.fetch("SELECT salt FROM analytics_salts WHERE day = ANY($1::date[])", [day1.date(), day2.date()])
    assert len({s["salt"] for s in salts}) == 2

    removed = await store.sweep(db, aggregate_days=730)
    assert removed["analytics_salts"] >= 2 and removed["analytics_visitors"] >= 2
    assert await db.fetchval("SELECT count(*) FROM analytics_salts WHERE day < $1", today.date()) == 0
    assert await db.fetchval("SELECT count(*) FROM analytics_visitors WHERE room_id = $1", room.id) == 0
    # The counts stay.
    assert await db.fetchval("SELECT sum(live_viewers) FROM analytics_room_days WHERE room_id = $1", room.id) == 2


async def test_aggregates_older_than_the_retention_go(db, room_factory):
    room = await room_factory()
    old = datetime.now(timezone.utc) - timedelta(days=40)
    recorder = AudienceRecorder(db, node="n1", clock=Clock(old), live_rooms=lambda: [room.id])
    recorder.sample(10)
    recorder.start_view(room.id, Viewer("GB", "chrome", "v:1"), "webrtc")
    await recorder.flush()
    await store.sweep(db, aggregate_days=30)
    for table in ("analytics_room_minutes", "analytics_concurrency", "analytics_room_days"):
        assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE room_id = $1", room.id) == 0, table


async def test_a_failed_write_keeps_the_counts_for_the_next_round(db, room_factory):
    room = await room_factory()
    clock = Clock(datetime(2026, 11, 29, 8, 0, tzinfo=timezone.utc))
    recorder = AudienceRecorder(db, node="n1", clock=clock)
    recorder.start_view(room.id, Viewer("GB", "chrome", "v:1"), "webrtc")

    class Broken:
        def acquire(self):
            raise OSError("connection refused")

        async def fetchval(self, *args):
            raise OSError("connection refused")

    recorder.db, recorder.salts.db = Broken(), Broken()
    with pytest.raises(OSError):
        await recorder.flush()
    recorder.db, recorder.salts.db = db, db
    await recorder.flush()
    assert await db.fetchval("SELECT joins FROM analytics_room_minutes WHERE room_id = $1", room.id) == 1


# --- the hooks, through the real entry points ---------------------------------------------------

@pytest.fixture
async def browser_client(aiohttp_client, service_urls, tmp_path):
    # The sampling loop stays out of the way: the test ticks by hand.
    app = make_app(make_config(service_urls, tmp_path / "data", ODS_ANALYTICS_SAMPLE_INTERVAL="3600"))
    return await aiohttp_client(app, headers={"User-Agent": CHROME})


async def _join(client, room, token: str, headers: dict[str, str] | None = None):
    ws = await client.ws_connect(f"/rooms/{room.slug}/ws", headers=headers or {})
    await ws.send_str(orjson.dumps({"type": "join", "token": token}).decode())
    while True:
        message = orjson.loads((await ws.receive(timeout=5)).data)
        if message["type"] in ("joined", "error"):
            assert message["type"] == "joined", message
            return ws


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_signaling_joins_count_viewers_but_not_hosts_or_opted_out_people(browser_client, db, room_factory,
                                                                              token_factory):
    client = browser_client
    recorder = client.app[AUDIENCE_RECORDER]
    room = await room_factory()
    host = await _join(client, room, await token_factory(room, "host"))
    viewer = await _join(client, room, await token_factory(room, "viewer"))
    dnt = await _join(client, room, await token_factory(room, "viewer"), {"DNT": "1"})
    gpc = await _join(client, room, await token_factory(room, "viewer"), {"Sec-GPC": "1"})
    assert len(recorder.rooms[room.id].views) == 1
    await viewer.close()
    await _until(lambda: room.id not in recorder.rooms)
    for ws in (host, dnt, gpc):
        await ws.close()
    await recorder.flush()
    minute = await db.fetchrow("SELECT sum(joins) AS joins, sum(leaves) AS leaves FROM analytics_room_minutes "
                               "WHERE room_id = $1", room.id)
    assert (minute["joins"], minute["leaves"]) == (1, 1)
    assert await db.fetchval("SELECT live_viewers FROM analytics_room_days WHERE room_id = $1", room.id) == 1


async def test_chat_questions_answers_and_searches_are_counted_without_identity(browser_client, db, room_factory,
                                                                               token_factory):
    client = browser_client
    room = await room_factory()
    chat = f"/rooms/{room.slug}/chat"
    host = await ChatSocket.open(client, chat, token=await token_factory(room, "host"))
    viewer = await ChatSocket.open(client, chat, token=await token_factory(room, "viewer"))
    await viewer.post("hello")
    await viewer.post("second")
    question = await viewer.post("how?", kind="question")
    assert (await host.request({"type": "answer", "id": question["id"]}))["type"] == "ack"
    for query in ("sfu", "hello"):
        assert (await client.get(f"/rooms/{room.slug}/chat/search", params={"q": query})).status == 200
    resp = await client.get(f"/rooms/{room.slug}/chat/search", params={"q": "x"}, headers={"Sec-GPC": "1"})
    assert resp.status == 200
    await host.close()
    await viewer.close()
    await client.app[AUDIENCE_RECORDER].flush()
    minute = await db.fetchrow("SELECT sum(messages) m, sum(questions) q, sum(answers) a FROM analytics_room_minutes "
                               "WHERE room_id = $1", room.id)
    assert (minute["m"], minute["q"], minute["a"]) == (2, 1, 1)
    day = await db.fetchrow("SELECT messages, questions, searches FROM analytics_room_days WHERE room_id = $1",
                            room.id)
    assert tuple(day) == (2, 1, 2)


async def test_replay_beacon_counts_plays_watch_time_and_retention(browser_client, db, room_factory):
    client = browser_client
    room = await room_factory()
    start = datetime.now(timezone.utc) - timedelta(hours=2)
    episode = await _episode(db, room, start, start + timedelta(seconds=95))

    async def beacon(body, headers=None):
        resp = await client.post("/api/analytics/replay", json=body, headers=headers or {})
        return resp.status, await resp.json()

    guard = client.app[BEACON_GUARD]
    clock = Clock(datetime(2026, 12, 1, tzinfo=timezone.utc))
    guard.clock = clock
    clock.now = 1000.0
    assert await beacon({"episode": episode, "play": True, "seconds": 0, "buckets": [0]}) == (200, {"counted": True})
    clock.now = 1020.0
    assert await beacon({"episode": episode, "seconds": 20.0, "buckets": [1, 2]}) == (200, {"counted": True})
    clock.now = 1020.5
    status, body = await beacon({"episode": episode, "seconds": 1.0})
    assert (status, body["error"]) == (429, "too_many_beacons")
    clock.now = 1040.0     # 60 s claimed 20 s after the last beacon: 20 s (+5 s slack) count
    assert await beacon({"episode": episode, "seconds": 60.0}) == (200, {"counted": True})
    other = {"User-Agent": FIREFOX_ANDROID}     # someone else, at the same moment
    assert await beacon({"episode": episode, "play": True, "seconds": 9.5, "buckets": [0]}, other) == \
        (200, {"counted": True})
    assert await beacon({"episode": episode, "play": True, "seconds": 10, "buckets": [0, 1]},
                        {"DNT": "1"}) == (200, {"counted": False})
    # Bad input: a reason, and nothing counted.
    assert (await beacon({"episode": episode, "seconds": 61}))[1]["error"] == "invalid_seconds"
    assert (await beacon({"episode": episode, "buckets": [11]}))[1]["error"] == "invalid_buckets"
    assert (await beacon({"episode": "1"}))[1]["error"] == "invalid_episode"
    assert (await beacon({"episode": 2**40}))[0] == 404
    await client.app[AUDIENCE_RECORDER].flush()
    row = await db.fetchrow("SELECT * FROM analytics_episodes WHERE episode_id = $1", episode)
    assert (row["replay_plays"], row["replay_seconds"], row["replay_viewers"]) == (2, 54.5, 2)
    buckets = {r["bucket"]: r["plays"] for r in await db.fetch(
        "SELECT bucket, plays FROM analytics_replay_buckets WHERE episode_id = $1", episode)}
    assert buckets == {0: 2, 1: 1, 2: 1}


async def test_private_room_replay_beacon_needs_admission(browser_client, db, room_factory):
    room = await room_factory(policy="signed-in")
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    episode = await _episode(db, room, start, start + timedelta(seconds=30))
    resp = await browser_client.post("/api/analytics/replay", json={"episode": episode, "play": True})
    assert (resp.status, (await resp.json())["error"]) == (401, "sign_in_required")
    await browser_client.app[AUDIENCE_RECORDER].flush()
    assert await db.fetchval("SELECT count(*) FROM analytics_episodes WHERE episode_id = $1", episode) == 0


async def test_no_analytics_table_holds_an_address(db):
    tables = {"analytics_salts", "analytics_visitors", "analytics_room_minutes", "analytics_concurrency",
              "analytics_room_days", "analytics_episodes", "analytics_replay_buckets", "operators",
              "policy_versions", "policy_acknowledgements", "policy_mailings", "account_deletions"}
    cols = await db.fetch("SELECT table_name, column_name, data_type FROM information_schema.columns "
                          "WHERE table_schema = 'public'")
    assert tables <= {c["table_name"] for c in cols}
    suspicious = [(c["table_name"], c["column_name"]) for c in cols
                  if "ip" in c["column_name"].split("_") or c["data_type"] in ("inet", "cidr")
                  or c["column_name"] in ("address", "remote_addr", "remote", "user_agent", "ua", "forwarded_for")]
    assert suspicious == []


async def test_one_viewer_in_two_rooms_on_one_day_does_not_link(db, room_factory):
    first, second = await room_factory(), await room_factory()
    recorder = AudienceRecorder(db, node="n1", clock=Clock(datetime(2026, 11, 28, 9, tzinfo=timezone.utc)))
    same = Viewer("GB", "chrome", "a:42")
    recorder.start_view(first.id, same, "webrtc").end()
    recorder.start_view(second.id, same, "webrtc").end()
    await recorder.flush()
    hashes = [r["visitor"] for r in await db.fetch(
        "SELECT visitor FROM analytics_visitors WHERE room_id = ANY($1::bigint[])", [first.id, second.id])]
    assert len(hashes) == 2 and hashes[0] != hashes[1]


async def test_viewers_waiting_before_the_episode_and_across_two_episodes_are_counted_in_each(db, room_factory):
    room = await room_factory()
    t0 = datetime(2026, 11, 27, 18, 0, tzinfo=timezone.utc)
    clock = Clock(t0)
    recorder = AudienceRecorder(db, node="n1", clock=clock)
    waiting = [recorder.start_view(room.id, Viewer("GB", "chrome", f"v:{n}"), "webrtc") for n in range(3)]
    clock.at(t0, 10)
    await recorder.tick(10)                      # no episode yet
    first = await _episode(db, room, t0 + timedelta(seconds=15))
    clock.at(t0, 20)
    await recorder.tick(10)                      # the three waiting viewers count in it
    late = recorder.start_view(room.id, Viewer("DE", "firefox", "v:late"), "webrtc")
    clock.at(t0, 30)
    await recorder.tick(10)                      # and the newcomer
    await db.execute("UPDATE episodes SET status = 'ready', ended_at = $2 WHERE id = $1",
                     first, t0 + timedelta(seconds=35))
    clock.at(t0, 35)
    waiting[0].end()                             # gone before the second episode
    second = await _episode(db, room, t0 + timedelta(seconds=38))
    clock.at(t0, 40)
    await recorder.tick(10)                      # the host published again: a new episode
    counts = {r["episode_id"]: r["live_viewers"] for r in await db.fetch(
        "SELECT episode_id, live_viewers FROM analytics_episodes WHERE episode_id = ANY($1::bigint[])",
        [first, second])}
    assert counts == {first: 4, second: 3}
    # Watch time: one viewer 0-35 s, two 0-40 s, the newcomer 20-40 s.
    assert await db.fetchval("SELECT sum(watch_seconds) FROM analytics_room_minutes WHERE room_id = $1",
                             room.id) == 35 + 2 * 40 + 20
    for view in waiting[1:] + [late]:
        view.end()


async def test_with_analytics_off_nothing_is_counted_and_the_beacon_still_answers(aiohttp_client, service_urls,
                                                                                 tmp_path, db, room_factory,
                                                                                 token_factory):
    from odsmedia.analytics.sink import NULL_SINK, audience

    app = make_app(make_config(service_urls, tmp_path / "data", ODS_ANALYTICS_ENABLED="false"))
    client = await aiohttp_client(app, headers={"User-Agent": CHROME})
    assert audience(client.app) is NULL_SINK and AUDIENCE_RECORDER not in client.app
    room = await room_factory()
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    episode = await _episode(db, room, start, start + timedelta(seconds=30))
    resp = await client.post("/api/analytics/replay", json={"episode": episode, "play": True, "buckets": [0]})
    assert resp.status == 200 and await resp.json() == {"counted": False}
    ws = await _join(client, room, await token_factory(room, "viewer"))
    await ws.close()
    assert await db.fetchval("SELECT count(*) FROM analytics_room_minutes WHERE room_id = $1", room.id) == 0


async def test_players_of_the_live_episode_over_hls_are_live_viewers_until_their_beacons_stop(browser_client, db,
                                                                                              room_factory):
    client = browser_client
    recorder = client.app[AUDIENCE_RECORDER]
    room = await room_factory()
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
    episode = await _episode(db, room, t0)           # live
    clock = Clock(t0)
    recorder.clock = client.app[BEACON_GUARD].clock = clock

    async def beacon(at: float, seconds: float, **extra) -> None:
        clock.at(t0, at)
        resp = await client.post("/api/analytics/replay", json={"episode": episode, "seconds": seconds, **extra})
        assert resp.status == 200 and await resp.json() == {"counted": True}

    await beacon(60, 0, play=True, buckets=[5])
    await beacon(70, 10)
    clock.at(t0, 80)
    recorder.sample(10)
    assert len(recorder.rooms[room.id].hls) == 1
    await beacon(80, 10)
    clock.at(t0, 110)
    recorder.sample(10)                              # 30 s since the last beacon: still here
    clock.at(t0, 120)
    recorder.sample(10)                              # 40 s: gone
    assert room.id not in recorder.rooms
    await recorder.register_episodes()
    await recorder.flush()
    samples = [r["viewers"] for r in await db.fetch(
        "SELECT viewers FROM analytics_concurrency WHERE room_id = $1 ORDER BY at", room.id)]
    assert samples == [1, 1, 0]
    minutes = await db.fetchrow("SELECT sum(joins) j, sum(leaves) l, sum(watch_seconds) w FROM analytics_room_minutes "
                                "WHERE room_id = $1", room.id)
    assert (minutes["j"], minutes["l"], minutes["w"]) == (1, 1, 20.0)
    assert await db.fetchval("SELECT live_viewers FROM analytics_episodes WHERE episode_id = $1", episode) == 1
    # Not a replay: no plays, no retention buckets.
    assert await db.fetchval("SELECT replay_plays FROM analytics_episodes WHERE episode_id = $1", episode) == 0
    assert await db.fetchval("SELECT count(*) FROM analytics_replay_buckets WHERE episode_id = $1", episode) == 0


async def test_opted_out_requests_are_logged_for_security_but_left_out_of_the_request_aggregates(browser_client,
                                                                                                 db):
    from odsmedia.privacy import retention
    from odsmedia.privacy.requestlog import REQUEST_LOG

    client = browser_client
    route = f"/api/nothing-here-{uuid.uuid4().hex[:6]}"
    assert await refusal(client.get(route)) == (404, "not_found")
    assert await refusal(client.get(route, headers={"Sec-GPC": "1"})) == (404, "not_found")
    await client.app[REQUEST_LOG].flush(db)
    rows = await db.fetch("SELECT counted FROM request_logs WHERE route = 'unmatched' ORDER BY at DESC LIMIT 2")
    assert sorted(r["counted"] for r in rows) == [False, True]
    old = datetime.now(timezone.utc) - timedelta(days=40)
    folded = f"/rollup-{uuid.uuid4().hex[:6]}"
    await db.executemany(
        "INSERT INTO request_logs (at, method, route, status, duration_ms, region, counted) "
        "VALUES ($1, 'GET', $2, 200, 1, 'GB', $3)", [(old, folded, True), (old, folded, False), (old, folded, True)])
    await retention.sweep(db, request_log_days=30, session_event_days=180)
    assert await db.fetchval("SELECT requests FROM analytics_daily WHERE route = $1", folded) == 2
    assert await db.fetchval("SELECT count(*) FROM request_logs WHERE route = $1", folded) == 0
