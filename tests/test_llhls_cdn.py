"""The LL-HLS origin in front of a CDN: shared caching, URL tokens, CORS, Range, the
recording node's redirect, the episode cache and the live poller count."""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone

import pytest

from conftest import make_config
from odsmedia.analytics.events import AUDIENCE_RECORDER
from odsmedia.errors import ApiError
from odsmedia.rooms.sfu import SFU
from recorder.llhls import LivePlaylist
from recorder.recorder import RECORDER
from recorder.routes import HLS_ORIGIN
from recorder.urltoken import UrlTokens, derive_key
from testsupport.synthetic import SyntheticSession, feed_sinks

pytestmark = pytest.mark.timeout(120)

URI = re.compile(r'URI="([^"]+)"|^([^#\s][^\s]*)$', re.M)
SHARED_KEY = "shared-cluster-secret-0123456789-abcdefghij"


def uris(text: str) -> list[str]:
    return [a or b for a, b in URI.findall(text)]


def first_part(text: str) -> str:
    return re.search(r'#EXT-X-PART:[^\n]*URI="([^"?]+)', text).group(1)


@asynccontextmanager
async def live(app, room, seconds: float = 6.0):
    """A recording of ``room`` on ``app`` fed in real time; yields it once a part is listed."""
    recording = app[RECORDER].recording_for(room.id, room.slug)
    sinks = {"video": recording.add_track("video"), "audio": recording.add_track("audio")}
    feeder = asyncio.create_task(feed_sinks(sinks, SyntheticSession(seconds, gop_seconds=1.0, jitter=0.0).frames))
    await recording.created.wait()
    await recording.live.wait_for(1, 0, timeout=30)
    try:
        yield recording
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        for sink in sinks.values():
            sink.on_end()
        await asyncio.wait_for(recording.done.wait(), 30)


def gate_allowed(exposition: str) -> float:
    match = re.search(r'^ods_gate_decisions_total\{entry="replay",reason="allowed"\} (\S+)$', exposition, re.M)
    return float(match.group(1)) if match else 0.0


async def app_client(aiohttp_client, service_urls, tmp_path, name="data", **env):
    from odsmedia.app import make_app

    settings = {"ODS_RECORDING_SEGMENT_SECONDS": "2", "ODS_RECORDING_PART_SECONDS": "0.5",
                "ODS_RECORDING_RECONNECT_GRACE": "0", **env}
    config = make_config(service_urls, tmp_path / name, **settings)
    return await aiohttp_client(make_app(config))


async def test_public_room_is_shared_cacheable_and_skips_the_gate(aiohttp_client, service_urls, room_factory,
                                                                   tmp_path):
    client = await app_client(aiohttp_client, service_urls, tmp_path)
    room = await room_factory()
    origin = client.app[HLS_ORIGIN]
    async with live(client.app, room) as recording:
        base = f"/episodes/{recording.episode_id}"
        before = gate_allowed(await (await client.get("/metrics")).text())
        queries = origin.live_episodes.queries
        # Long enough that a loaded machine does not see the entry age out mid-test; the
        # recording's end must still invalidate it (below).
        origin.live_episodes.ttl = 60
        plain = await client.get(f"{base}/live.m3u8")
        assert plain.status == 200
        # A plain reload goes stale within a part (0.5 s: whole seconds round it to 0).
        assert plain.headers["Cache-Control"] == "public, max-age=0, s-maxage=0"
        text = await plain.text()
        assert all("token=" not in uri for uri in uris(text))
        blocking = await client.get(f"{base}/live.m3u8", params={"_HLS_msn": "1", "_HLS_part": "0"})
        # A blocking response names a future state: six target durations (2 s).
        assert blocking.headers["Cache-Control"] == "public, max-age=12, s-maxage=12"
        assert "Vary" not in blocking.headers       # no CORS list: nothing varies
        part = await client.get(f"{base}/{first_part(text)}")
        assert part.status == 200
        assert part.headers["Cache-Control"] == "public, max-age=31536000, s-maxage=31536000, immutable"
        assert part.headers["Accept-Ranges"] == "bytes"
        # Nobody was asked who they are, and the episode came from Postgres once.
        assert gate_allowed(await (await client.get("/metrics")).text()) == before
        assert origin.live_episodes.queries - queries == 1
    # The session ended: the next poll looks the episode up again and gets the VOD playlist.
    response = await client.get(f"{base}/live.m3u8")
    assert response.status == 200 and (await response.text()).rstrip().endswith("#EXT-X-ENDLIST")
    assert response.headers["Cache-Control"] == "public, no-cache"
    assert origin.live_episodes.queries - queries == 2


async def test_gated_room_uses_signed_url_tokens(aiohttp_client, service_urls, room_factory, token_factory,
                                                 tmp_path):
    client = await app_client(aiohttp_client, service_urls, tmp_path)
    room = await room_factory(policy="signed-in")
    other = await room_factory(policy="signed-in")
    viewer = {"Authorization": f"Bearer {await token_factory(room, 'viewer')}"}
    origin = client.app[HLS_ORIGIN]
    async with live(client.app, room) as recording, live(client.app, other) as other_recording:
        base = f"/episodes/{recording.episode_id}"
        refused = await client.get(f"{base}/live.m3u8")
        assert refused.status == 401 and (await refused.json())["error"] == "sign_in_required"

        # The listing names the live playlist with a token for this episode.
        listing = await (await client.get(f"/rooms/{room.slug}/episodes", headers=viewer)).json()
        entry = listing["episodes"][0]
        token = re.search(r"token=([^&]+)", entry["live_playlist"]).group(1)
        assert entry["live_playlist"] == f"{base}/live.m3u8?token={token}"
        assert entry["token_expires"] == int(token.split(".")[0])
        assert 295 <= entry["token_expires"] - time.time() <= 300 * 1.25 + 1

        # Admitted by the gate: private, and every URI carries a fresh token.
        admitted = await client.get(f"{base}/live.m3u8", headers=viewer)
        assert admitted.status == 200 and admitted.headers["Cache-Control"].startswith("private, ")
        listed = uris(await admitted.text())
        assert listed and all(re.search(r"\?token=[0-9]+\.[A-Za-z0-9_-]{22}$", u) for u in listed)

        # With the token and no cookie or header (a CDN fetching): shared, for no longer than
        # the token lives, and the URIs carry the same token (one cached copy for everyone).
        before = gate_allowed(await (await client.get("/metrics")).text())
        shared = await client.get(f"{base}/live.m3u8", params={"token": token, "_HLS_msn": "1", "_HLS_part": "0"})
        assert shared.status == 200
        assert shared.headers["Cache-Control"] == "public, max-age=12, s-maxage=12"
        text = await shared.text()
        assert all(u.endswith(f"?token={token}") for u in uris(text))
        asked = time.time()
        part = await client.get(f"{base}/{first_part(text)}", params={"token": token})
        answered = time.time()
        assert part.status == 200
        seconds = int(re.search(r"s-maxage=([0-9]+)", part.headers["Cache-Control"]).group(1))
        assert part.headers["Cache-Control"] == f"public, max-age={seconds}, s-maxage={seconds}, immutable"
        # Cached no longer than the token lives: its remaining whole seconds when answered.
        expires = entry["token_expires"]
        assert int(expires - answered) <= seconds <= int(expires - asked)
        assert gate_allowed(await (await client.get("/metrics")).text()) == before   # no gate query

        # Refusals: 403 with a reason, for playlists and media alike.
        expired = UrlTokens(origin.tokens.key, lifetime=300, clock=lambda: time.time() - 1000).mint(
            recording.episode_id)
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        elsewhere = origin.tokens.mint(other_recording.episode_id)
        for bad, reason in [(expired, "token_expired"), (forged, "token_invalid"), (elsewhere, "token_invalid"),
                            ("123", "token_malformed"), ("x.y", "token_malformed")]:
            for path in ("live.m3u8", first_part(text)):
                response = await client.get(f"{base}/{path}", params={"token": bad})
                assert response.status == 403, (bad, path)
                assert (await response.json())["error"] == reason

        # The replay playlist (from the rows): admitted by the gate it carries no token (loaded
        # once, it would outlive one); asked with a token it carries that token on.
        deadline = time.monotonic() + 30
        while (rows := await client.get(f"{base}/index.m3u8", headers=viewer)).status == 404:
            assert time.monotonic() < deadline, "no segment row was listed"
            await asyncio.sleep(0.1)
        assert rows.status == 200 and rows.headers["Cache-Control"] == "no-cache"
        assert all("token=" not in u for u in uris(await rows.text()))
        shared_rows = await client.get(f"{base}/index.m3u8", params={"token": token})
        assert shared_rows.headers["Cache-Control"] == "public, no-cache"
        assert all(u.endswith(f"?token={token}") for u in uris(await shared_rows.text()))


def test_url_tokens_are_shared_within_a_quantum_and_survive_a_key_rotation():
    now = 1_000_000.0
    old = UrlTokens(derive_key("old-secret"), lifetime=300, clock=lambda: now)
    # Everyone admitted within the same quarter of the lifetime gets the same token.
    later = UrlTokens(derive_key("old-secret"), lifetime=300, clock=lambda: now + 10)
    assert old.mint(7) == later.mint(7) and old.mint(7) != old.mint(8)
    token = old.mint(7)
    rotated = UrlTokens(derive_key("new-secret"), lifetime=300, previous=derive_key("old-secret"),
                        clock=lambda: now + 20)
    assert rotated.verify(token, 7).expires == int(token.split(".")[0])
    without = UrlTokens(derive_key("new-secret"), lifetime=300, clock=lambda: now + 20)
    with pytest.raises(ApiError) as refused:
        without.verify(token, 7)
    assert refused.value.reason == "token_invalid"
    longer = UrlTokens(derive_key("new-secret"), lifetime=3000, clock=lambda: now)
    with pytest.raises(ApiError) as refused:
        rotated.verify(longer.mint(7), 7)       # signed, but outliving what this origin hands out
    assert refused.value.reason == "token_invalid"


async def test_cors_for_players_on_other_origins(aiohttp_client, service_urls, room_factory, tmp_path):
    client = await app_client(aiohttp_client, service_urls, tmp_path,
                              ODS_HLS_CORS_ORIGINS="https://player.example,https://tv.example")
    room = await room_factory()
    async with live(client.app, room) as recording:
        base = f"/episodes/{recording.episode_id}"
        preflight = await client.options(f"{base}/live.m3u8", headers={
            "Origin": "https://player.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range"})
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://player.example"
        assert preflight.headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"
        assert "Range" in preflight.headers["Access-Control-Allow-Headers"]
        stranger = await client.options(f"{base}/live.m3u8", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        assert stranger.status == 403 and (await stranger.json())["error"] == "origin_not_allowed"
        assert "Access-Control-Allow-Origin" not in stranger.headers

        response = await client.get(f"{base}/live.m3u8", headers={"Origin": "https://tv.example"})
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "https://tv.example"
        assert response.headers["Vary"] == "Origin"
        assert "Content-Range" in response.headers["Access-Control-Expose-Headers"]
        part = await client.get(f"{base}/{first_part(await response.text())}",
                                headers={"Origin": "https://evil.example"})
        assert part.status == 200 and "Access-Control-Allow-Origin" not in part.headers
        assert part.headers["Vary"] == "Origin"       # the cache keys on Origin either way
        # A refusal is readable by the player too (its reason is in the body).
        refused = await client.get(f"{base}/live.m3u8", params={"token": "1.x"},
                                   headers={"Origin": "https://tv.example"})
        assert refused.status == 403 and refused.headers["Access-Control-Allow-Origin"] == "https://tv.example"


async def test_range_requests_on_parts_and_held_segments(aiohttp_client, service_urls, room_factory, tmp_path):
    client = await app_client(aiohttp_client, service_urls, tmp_path)
    room = await room_factory()
    async with live(client.app, room) as recording:
        base = f"/episodes/{recording.episode_id}"
        await recording.live.wait_for(2, 0, timeout=30)       # segment 1 is closed, held as parts
        text = await (await client.get(f"{base}/live.m3u8")).text()
        name = first_part(text)
        whole = await (await client.get(f"{base}/{name}")).read()
        assert len(whole) > 200
        ranged = await client.get(f"{base}/{name}", headers={"Range": "bytes=100-199"})
        assert ranged.status == 206
        assert ranged.headers["Content-Range"] == f"bytes 100-199/{len(whole)}"
        assert await ranged.read() == whole[100:200]
        tail = await client.get(f"{base}/{name}", headers={"Range": "bytes=-50"})
        assert tail.status == 206 and await tail.read() == whole[-50:]
        outside = await client.get(f"{base}/{name}", headers={"Range": f"bytes={len(whole)}-"})
        assert outside.status == 416
        assert (await outside.json())["error"] == "range_not_satisfiable"
        assert outside.headers["Content-Range"] == f"bytes */{len(whole)}"
        # A stale If-Range gets the whole part.
        stale = await client.get(f"{base}/{name}", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        assert stale.status == 200 and await stale.read() == whole
        segment = recording.live_segment_bytes("00001-0.m4s")
        assert segment is not None
        held = await client.get(f"{base}/00001-0.m4s", headers={"Range": "bytes=0-99"})
        assert held.status == 206 and await held.read() == segment[:100]


async def test_live_playlist_asked_of_another_node_redirects_to_the_recording_node(
        aiohttp_client, aiohttp_server, service_urls, room_factory, token_factory, tmp_path):
    """Two nodes on one Redis and one secret: the room is live (and recorded) on A; B answers
    the live playlist and the parts with a 307 to A, query string and token included."""
    from aiohttp.test_utils import unused_port

    from odsmedia.app import make_app

    nodes, urls = [], []
    for name in ("a", "b"):
        port = unused_port()
        urls.append(f"http://127.0.0.1:{port}")
        config = make_config(service_urls, tmp_path / name, ODS_PUBLIC_URL=urls[-1], ODS_HTTP_PORT=str(port),
                             ODS_SECRET_KEY=SHARED_KEY, ODS_RECORDING_SEGMENT_SECONDS="2",
                             ODS_RECORDING_PART_SECONDS="0.5", ODS_RECORDING_RECONNECT_GRACE="0")
        nodes.append(await aiohttp_client(await aiohttp_server(make_app(config), port=port)))
    node_a, node_b = nodes
    room = await room_factory(policy="signed-in")
    viewer = {"Authorization": f"Bearer {await token_factory(room, 'viewer')}"}
    await node_a.app[SFU].placement.claim(room.slug)       # what the first participant's join does
    try:
        async with live(node_a.app, room) as recording:
            base = f"/episodes/{recording.episode_id}"
            # B admits (the viewer's own credentials) and mints a token A accepts: one secret.
            listing = await (await node_b.get(f"/rooms/{room.slug}/episodes", headers=viewer)).json()
            path = listing["episodes"][0]["live_playlist"]
            query = path.split("?", 1)[1] + "&_HLS_msn=1&_HLS_part=0"
            moved = await node_b.get(f"{base}/live.m3u8?{query}", allow_redirects=False)
            assert moved.status == 307
            assert moved.headers["Location"] == f"{urls[0]}{base}/live.m3u8?{query}"
            assert moved.headers["Cache-Control"] == "no-store"
            followed = await node_b.get(f"{base}/live.m3u8?{query}")
            assert followed.status == 200 and str(followed.url).startswith(urls[0])
            text = await followed.text()
            part = first_part(text)
            token = path.split("token=")[1]
            moved_part = await node_b.get(f"{base}/{part}?token={token}", allow_redirects=False)
            assert moved_part.status == 307
            assert moved_part.headers["Location"] == f"{urls[0]}{base}/{part}?token={token}"
            # Local storage: the live episode's closed segments and init sections are on A's disk too.
            await recording.live.wait_for(2, 0, timeout=30)
            init = re.search(r'#EXT-X-MAP:URI="([^"?]+)', text).group(1)
            for name in ("00001-0.m4s", init):
                moved = await node_b.get(f"{base}/{name}?token={token}", allow_redirects=False)
                assert moved.status == 307 and moved.headers["Location"] == f"{urls[0]}{base}/{name}?token={token}"
                followed = await node_b.get(f"{base}/{name}?token={token}")
                assert followed.status == 200 and len(await followed.read()) > 100
            # A refusal is decided before anything is revealed about where the room lives.
            refused = await node_b.get(f"{base}/live.m3u8", allow_redirects=False)
            assert (refused.status, (await refused.json())["error"]) == (401, "sign_in_required")
    finally:
        await node_a.app[SFU].placement.release(room.slug)


async def test_distinct_pollers_per_minute(aiohttp_client, service_urls, room_factory, tmp_path):
    client = await app_client(aiohttp_client, service_urls, tmp_path)
    room = await room_factory()
    pollers = client.app[HLS_ORIGIN].pollers
    minute = [int(time.time() // 60) * 60.0 + 1]
    pollers.clock = lambda: minute[0]
    async with live(client.app, room) as recording:
        url = f"/episodes/{recording.episode_id}/live.m3u8"
        for agent in ("Mozilla/5.0 Chrome/120", "Mozilla/5.0 Chrome/120", "Mozilla/5.0 Firefox/121"):
            assert (await client.get(url, headers={"User-Agent": agent})).status == 200
        # Do Not Track / GPC: not counted.
        await client.get(url, headers={"User-Agent": "Mozilla/5.0 Safari/17", "DNT": "1"})
        await client.get(url, headers={"User-Agent": "Mozilla/5.0 Safari/17", "Sec-GPC": "1"})
        assert pollers.last_minute() == {}          # the minute is not over
        # The audience analytics count the same two as live viewers over HLS (a bot, an
        # opted-out request: not counted), next to the WebRTC viewers.
        audience = client.app[AUDIENCE_RECORDER]
        assert sorted(v.family for v in audience.rooms[room.id].hls) == ["chrome", "firefox"]
        await client.get(url, headers={"User-Agent": "curl/8.0"})
        assert len(audience.rooms[room.id].hls) == 2
        minute[0] += 60
        # The node's count takes every poller (a script or a CDN's fetcher is load on it too).
        assert pollers.last_minute() == {recording.episode_id: 3}
        exposition = await (await client.get("/metrics")).text()
        assert re.search(r"^ods_recorder_llhls_viewers 3\.0$", exposition, re.M)
        # No hash outlives its minute.
        minute[0] += 120
        assert pollers.last_minute() == {} and pollers.current == {}


def test_delta_playlist_keeps_the_discontinuity_sequence_of_skipped_restarts():
    """A publisher restart (a discontinuity) among the skipped segments is carried by
    EXT-X-DISCONTINUITY-SEQUENCE; one among the listed segments stays an EXT-X-DISCONTINUITY."""
    live = LivePlaylist(target=2.0, part_target=0.5)
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    restarts = {3: 1, 5: 2, 12: 3}        # msn -> the writer's period after the restart
    period = 0
    for msn in range(1, 15):
        period = restarts.get(msn, period)
        for index in range(4):
            live.add_part(msn=msn, segment_uri=f"{msn:05d}-{period}.m4s",
                          part_uri=f"{msn:05d}-{period}.{index}.m4s", duration=0.5, independent=index == 0,
                          init=f"init-{period}.mp4", discontinuity=msn in restarts and index == 0,
                          program_date_time=at)
        live.close_segment(msn, 2.0)
    full = live.render()
    assert "#EXT-X-DISCONTINUITY-SEQUENCE" not in full and full.count("#EXT-X-DISCONTINUITY\n") == 3
    delta = live.render(skip=True)
    # 28 s of media, CAN-SKIP-UNTIL 12 s: segments 1-8 are skipped, 9-14 listed.
    assert "#EXT-X-SKIP:SKIPPED-SEGMENTS=8\n" in delta
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:2\n" in delta
    assert delta.index("#EXT-X-DISCONTINUITY-SEQUENCE") < delta.index("#EXT-X-SKIP")
    listed = [line for line in delta.splitlines() if line.endswith(".m4s") and not line.startswith("#")]
    assert listed == [f"{m:05d}-{2 if m < 12 else 3}.m4s" for m in range(9, 15)]
    # The restart at 12 is listed, with its own init section.
    assert delta.count("#EXT-X-DISCONTINUITY\n") == 1
    assert delta.index("#EXT-X-DISCONTINUITY\n") < delta.index('#EXT-X-MAP:URI="init-3.mp4"') < delta.index(
        "00012-3.m4s")
    # A client merging the delta into the full playlist counts the same discontinuities.
    before_listed = full[:full.index("00009-2.m4s")].count("#EXT-X-DISCONTINUITY\n")
    assert before_listed == 2


def test_hls_settings_are_checked():
    from odsmedia import config as configmod

    assert configmod.load(environ={"ODS_HLS_CORS_ORIGINS": "https://a.example, http://b.example:8080"})[
        "hls.cors_origins"] == ("https://a.example", "http://b.example:8080")
    assert configmod.load(environ={"ODS_HLS_TOKEN_SECONDS": "10m"})["hls.token_seconds"] == 600.0
    for env, value in [("ODS_HLS_CORS_ORIGINS", "https://a.example/path"), ("ODS_HLS_CORS_ORIGINS", "ftp://a"),
                       ("ODS_HLS_TOKEN_SECONDS", "5"), ("ODS_HLS_TOKEN_SECONDS", "2d")]:
        with pytest.raises(configmod.ConfigError) as refused:
            configmod.load(environ={env: value})
        assert str(refused.value).startswith(f"invalid {env}={value!r}: expected "), str(refused.value)


async def test_publisher_restart_is_a_discontinuity_in_full_and_delta_playlists(aiohttp_client, service_urls,
                                                                               room_factory, tmp_path):
    """The host's encoder restarts (new parameter sets: a new period) within the reconnect grace;
    the live playlist marks the restart, and a delta update that skips it carries the count."""
    # 1 s segments: the skip boundary (6 target durations) is reached sooner.
    client = await app_client(aiohttp_client, service_urls, tmp_path, ODS_RECORDING_RECONNECT_GRACE="30",
                              ODS_RECORDING_SEGMENT_SECONDS="1")
    room = await room_factory()
    recording = client.app[RECORDER].recording_for(room.id, room.slug)
    first = SyntheticSession(3.0, gop_seconds=0.5, jitter=0.0)
    sinks = {"video": recording.add_track("video"), "audio": recording.add_track("audio")}
    await feed_sinks(sinks, first.frames)
    for sink in sinks.values():
        sink.on_end()                      # the publisher is gone; the grace keeps the episode open
    again = SyntheticSession(12.0, gop_seconds=0.5, jitter=0.0, width=352, height=192, first_index=1000,
                             arrival0=first.frames[-1].arrival + 0.5, seed=2)
    sinks = {"video": recording.add_track("video"), "audio": recording.add_track("audio")}
    feeder = asyncio.create_task(feed_sinks(sinks, again.frames))
    try:
        live = recording.live
        deadline = time.monotonic() + 60
        while not (restart := next((s.msn for s in live.segments if s.discontinuity), None)):
            assert time.monotonic() < deadline, "no new period after the restart"
            await live.wait_for(live.last_position()[0] + 1, None, timeout=30)
        # Enough after the restart that a delta update skips it (CAN-SKIP-UNTIL: 6 target durations).
        await live.wait_for(restart + 7, None, timeout=30)
        base = f"/episodes/{recording.episode_id}/live.m3u8"
        full = await (await client.get(base)).text()
        delta = await (await client.get(base, params={"_HLS_skip": "YES"})).text()
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        for sink in sinks.values():
            sink.on_end()
        recording.end()
        await asyncio.wait_for(recording.done.wait(), 30)
    assert full.count("#EXT-X-DISCONTINUITY\n") == 1 and "#EXT-X-DISCONTINUITY-SEQUENCE" not in full
    assert full.index("#EXT-X-DISCONTINUITY\n") < full.index('#EXT-X-MAP:URI="init-1.mp4"') < full.index(
        f"{restart:05d}-1.m4s")
    skipped = int(re.search(r"#EXT-X-SKIP:SKIPPED-SEGMENTS=([0-9]+)", delta).group(1))
    assert skipped > restart - 1
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:1\n" in delta and "#EXT-X-DISCONTINUITY\n" not in delta
    # The delta lists the full playlist's last segments, with the restart's init section.
    listed = [line for line in delta.splitlines() if line.endswith(".m4s") and not line.startswith("#")]
    full_listed = [line for line in full.splitlines() if line.endswith(".m4s") and not line.startswith("#")]
    assert listed == full_listed[skipped:] and all(name.endswith("-1.m4s") for name in listed)
    assert '#EXT-X-MAP:URI="init-1.mp4"' in delta


async def test_without_parts_the_recording_node_serves_its_live_segments(aiohttp_client, service_urls, db,
                                                                        room_factory, tmp_path):
    """recording.part_seconds = 0 (no LL-HLS): the node recording a live episode serves its stored
    segments itself (the redirect is only for a node that does not record it)."""
    from recorder import episodes

    client = await app_client(aiohttp_client, service_urls, tmp_path, ODS_RECORDING_PART_SECONDS="0",
                              ODS_RECORDING_SEGMENT_SECONDS="1")
    room = await room_factory()
    await client.app[SFU].placement.claim(room.slug)
    recording = client.app[RECORDER].recording_for(room.id, room.slug)
    sinks = {"video": recording.add_track("video"), "audio": recording.add_track("audio")}
    feeder = asyncio.create_task(feed_sinks(sinks, SyntheticSession(4.0, gop_seconds=0.5, jitter=0.0).frames))
    try:
        await recording.created.wait()
        assert recording.live is None
        deadline = time.monotonic() + 30
        while not (rows := await episodes.segments(db, recording.episode_id)):
            assert time.monotonic() < deadline, "no segment row"
            await asyncio.sleep(0.1)
        response = await client.get(f"/episodes/{recording.episode_id}/{rows[0].name}", allow_redirects=False)
        assert response.status == 200 and len(await response.read()) == rows[0].size_bytes
        live = await client.get(f"/episodes/{recording.episode_id}/live.m3u8", allow_redirects=False)
        assert live.status == 404 and (await live.json())["error"] == "live_playlist_not_here"
    finally:
        await feeder
        for sink in sinks.values():
            sink.on_end()
        await asyncio.wait_for(recording.done.wait(), 30)
        await client.app[SFU].placement.release(room.slug)
