"""Replay HTTP API against the full app: listings, playlist, segments, Range, ETag, gate, delete."""

from __future__ import annotations

import asyncio

import pytest

from conftest import make_config
from odsmedia.app import make_app
from recorder import episodes
from recorder.recorder import RECORDER
from testsupport.synthetic import SyntheticSession, read_segment


@pytest.fixture
async def app_client(aiohttp_client, service_urls, tmp_path):
    config = make_config(service_urls, tmp_path / "data", ODS_RECORDING_SEGMENT_SECONDS="1",
                         ODS_RECORDING_RECONNECT_GRACE="0")
    return await aiohttp_client(make_app(config))


async def record(app, room, seconds=3.0):
    recorder = app[RECORDER]
    recording = recorder.recording_for(room.id, room.slug, room.title)
    sinks = {"video": recording.add_track("video"), "audio": recording.add_track("audio")}
    for frame in SyntheticSession(seconds, gop_seconds=0.5).frames:
        sinks[frame.kind].on_frame(frame)
    for sink in sinks.values():
        sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 30)
    assert recording.status == "ready"
    return recording.episode_id


async def recorder_samples(client) -> dict[str, float]:
    text = await (await client.get("/metrics")).text()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith("ods_recorder_")}


async def test_list_metadata_playlist_and_segments(app_client, room_factory):
    room = await room_factory(title="Replays")
    before = await recorder_samples(app_client)
    first = await record(app_client.app, room, 2.0)
    second = await record(app_client.app, room, 3.0)

    resp = await app_client.get(f"/rooms/{room.slug}/episodes", headers={"Accept": "application/json"})
    assert resp.status == 200
    body = await resp.json()
    assert [e["id"] for e in body["episodes"]] == [second, first]      # newest first
    item = body["episodes"][0]
    assert item["status"] == "ready" and item["duration"] == pytest.approx(3.0, abs=0.05)
    assert set(item) >= {"id", "title", "status", "started_at", "duration"}

    resp = await app_client.get(f"/episodes/{second}")
    meta = await resp.json()
    assert meta["room"] == room.slug and meta["playlist"] == f"/episodes/{second}/index.m3u8"
    assert meta["can_delete"] is False

    resp = await app_client.get(f"/episodes/{second}/index.m3u8")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/vnd.apple.mpegurl"
    text = await resp.text()
    assert text.startswith("#EXTM3U") and text.rstrip().endswith("#EXT-X-ENDLIST")
    etag = resp.headers["ETag"]
    resp = await app_client.get(f"/episodes/{second}/index.m3u8", headers={"If-None-Match": etag})
    assert resp.status == 304

    # The recorder's families moved by exactly these two episodes (2 + 3 one-second segments).
    after = await recorder_samples(app_client)
    rows = [*await episodes.segments(app_client.app[RECORDER].db, first),
            *await episodes.segments(app_client.app[RECORDER].db, second)]
    moved = {name: after[name] - before.get(name, 0.0) for name in after}
    assert len(rows) == 5
    assert moved["ods_recorder_segments_total"] == moved["ods_recorder_listing_seconds_count"] == len(rows)
    assert moved["ods_recorder_segment_bytes_total"] == sum(r.size_bytes for r in rows)
    assert moved['ods_recorder_episodes_total{status="ready"}'] == 2

    names = [l for l in text.splitlines() if l and not l.startswith("#")]
    assert len(names) == 3
    resp = await app_client.get(f"/episodes/{second}/init-0.mp4")
    assert resp.status == 200 and resp.headers["Content-Type"] == "video/mp4"
    init = await resp.read()
    counters = []
    for name in names:
        resp = await app_client.get(f"/episodes/{second}/{name}")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "video/mp4"
        assert "immutable" in resp.headers["Cache-Control"]
        assert resp.headers["Accept-Ranges"] == "bytes"
        data = await resp.read()
        counters += [c for _, c in read_segment(init, data).video]
    assert counters == list(range(90))


async def test_range_requests_and_conditional_segments(app_client, room_factory):
    room = await room_factory()
    episode_id = await record(app_client.app, room, 2.0)
    resp = await app_client.get(f"/episodes/{episode_id}/00001-0.m4s")
    whole = await resp.read()
    etag = resp.headers["ETag"]
    size = len(whole)

    resp = await app_client.get(f"/episodes/{episode_id}/00001-0.m4s", headers={"Range": "bytes=0-99"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 0-99/{size}"
    assert await resp.read() == whole[:100]

    resp = await app_client.get(f"/episodes/{episode_id}/00001-0.m4s", headers={"Range": "bytes=100-"})
    assert resp.status == 206 and await resp.read() == whole[100:]

    resp = await app_client.get(f"/episodes/{episode_id}/00001-0.m4s", headers={"Range": "bytes=-10"})
    assert resp.status == 206 and await resp.read() == whole[-10:]
    assert resp.headers["Content-Range"] == f"bytes {size - 10}-{size - 1}/{size}"

    resp = await app_client.get(f"/episodes/{episode_id}/00001-0.m4s", headers={"Range": f"bytes={size}-"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == f"bytes */{size}"
    assert (await resp.json())["error"] == "range_not_satisfiable"

    # A Range for another version of the file (If-Range mismatch) gets the whole file.
    resp = await app_client.get(f"/episodes/{episode_id}/00001-0.m4s",
                                headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert resp.status == 200 and len(await resp.read()) == size

    resp = await app_client.get(f"/episodes/{episode_id}/00001-0.m4s", headers={"If-None-Match": etag})
    assert resp.status == 304

    resp = await app_client.head(f"/episodes/{episode_id}/00001-0.m4s")
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == size


async def test_segment_names_are_checked_against_the_episode(app_client, room_factory, tmp_path):
    room = await room_factory()
    episode_id = await record(app_client.app, room, 2.0)
    other = await record(app_client.app, await room_factory(), 2.0)
    for path in (
        f"/episodes/{episode_id}/00099-0.m4s",          # well-formed, not in the list
        f"/episodes/{episode_id}/init-7.mp4",
        f"/episodes/{episode_id}/..%2F..%2Frecorder-node",
        f"/episodes/{episode_id}/%2e%2e/%2e%2e/etc/passwd",
        f"/episodes/{episode_id}/index.m3u8/../../x",
        f"/episodes/{episode_id}/00001-0.m4s%00.txt",
        "/episodes/999999999/00001-0.m4s",
    ):
        resp = await app_client.get(path)
        assert resp.status == 404, path
    # Another episode's segment names exist, but only under that episode.
    resp = await app_client.get(f"/episodes/{other}/00001-0.m4s")
    assert resp.status == 200
    resp = await app_client.get("/episodes/abc")
    assert (resp.status, (await resp.json())["error"]) == (404, "not_found")


async def test_replay_goes_through_the_room_gate(app_client, room_factory, token_factory):
    room = await room_factory(policy="signed-in")
    episode_id = await record(app_client.app, room, 1.5)
    for path in (f"/rooms/{room.slug}/episodes", f"/episodes/{episode_id}",
                 f"/episodes/{episode_id}/index.m3u8", f"/episodes/{episode_id}/00001-0.m4s"):
        resp = await app_client.get(path, headers={"Accept": "application/json"})
        assert resp.status == 401, path
        assert (await resp.json())["error"] == "sign_in_required"
    viewer = await token_factory(room, role="viewer")
    resp = await app_client.get(f"/episodes/{episode_id}/index.m3u8",
                                headers={"Authorization": f"Bearer {viewer}"})
    assert resp.status == 200
    resp = await app_client.get("/rooms/no-such-room/episodes", headers={"Accept": "application/json"})
    assert resp.status == 404 and (await resp.json())["error"] == "room_not_found"


async def test_delete_needs_host_or_moderator_and_removes_rows_and_files(app_client, room_factory, token_factory):
    room = await room_factory()
    episode_id = await record(app_client.app, room, 1.5)
    recorder = app_client.app[RECORDER]
    episode = await episodes.get(recorder.db, episode_id)
    folder = recorder.storage.root / episode.storage_key
    assert (folder / "index.m3u8").exists()

    resp = await app_client.delete(f"/episodes/{episode_id}")
    assert resp.status == 403 and (await resp.json())["error"] == "not_a_moderator"
    viewer = await token_factory(room, role="viewer")
    resp = await app_client.delete(f"/episodes/{episode_id}", headers={"Authorization": f"Bearer {viewer}"})
    assert (resp.status, (await resp.json())["error"]) == (403, "not_a_moderator")
    assert folder.exists()

    host = await token_factory(room, role="host")
    resp = await app_client.get(f"/episodes/{episode_id}", headers={"Authorization": f"Bearer {host}"})
    assert (await resp.json())["can_delete"] is True
    resp = await app_client.delete(f"/episodes/{episode_id}", headers={"Authorization": f"Bearer {host}"})
    assert resp.status == 204
    assert await episodes.get(recorder.db, episode_id) is None
    assert await recorder.db.fetchval("SELECT count(*) FROM segments WHERE episode_id = $1", episode_id) == 0
    assert not folder.exists()
    resp = await app_client.get(f"/episodes/{episode_id}/index.m3u8")
    assert resp.status == 404 and (await resp.json())["error"] == "episode_not_found"


async def test_live_episode_cannot_be_deleted_and_serves_an_event_playlist(app_client, room_factory, token_factory):
    room = await room_factory()
    recorder = app_client.app[RECORDER]
    recording = recorder.recording_for(room.id, room.slug)
    sink = recording.add_track("video")
    for frame in SyntheticSession(2.5, audio=False, gop_seconds=0.5).frames:
        sink.on_frame(frame)
    await recording.created.wait()
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        resp = await app_client.get(f"/episodes/{recording.episode_id}/index.m3u8")
        if resp.status == 200 and "00002-0.m4s" in (text := await resp.text()):
            break
        assert asyncio.get_running_loop().time() < deadline, "live playlist never listed segment 2"
        await asyncio.sleep(0.05)
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and "#EXT-X-ENDLIST" not in text
    host = await token_factory(room, role="host")
    resp = await app_client.delete(f"/episodes/{recording.episode_id}", headers={"Authorization": f"Bearer {host}"})
    assert resp.status == 409 and (await resp.json())["error"] == "episode_live"
    sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 30)



async def test_cli_lists_and_deletes_episodes(app_client, room_factory, service_urls, tmp_path):
    import json

    from conftest import odsmedia_env
    from test_cli import run_cli

    room = await room_factory()
    episode_id = await record(app_client.app, room, 1.5)
    recorder = app_client.app[RECORDER]
    folder = recorder.storage.root / (await episodes.get(recorder.db, episode_id)).storage_key
    env = odsmedia_env(service_urls, tmp_path / "data")

    listed = await asyncio.to_thread(run_cli, env, "episode", "list", room.slug)
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [episode_id]
    deleted = await asyncio.to_thread(run_cli, env, "episode", "delete", str(episode_id))
    assert deleted.returncode == 0, deleted.stderr
    assert await episodes.get(recorder.db, episode_id) is None and not folder.exists()
    again = await asyncio.to_thread(run_cli, env, "episode", "delete", str(episode_id))
    assert again.returncode == 1 and "no episode" in again.stderr


async def test_episode_list_pages_newest_first(app_client, room_factory):
    room = await room_factory()
    ids = [await record(app_client.app, room, 0.6) for _ in range(3)]
    headers = {"Accept": "application/json"}
    resp = await app_client.get(f"/rooms/{room.slug}/episodes?limit=2", headers=headers)
    body = await resp.json()
    assert [e["id"] for e in body["episodes"]] == [ids[2], ids[1]] and body["next_before"] == ids[1]
    resp = await app_client.get(f"/rooms/{room.slug}/episodes?limit=2&before={ids[1]}", headers=headers)
    body = await resp.json()
    assert [e["id"] for e in body["episodes"]] == [ids[0]] and body["next_before"] is None
    for query, reason in (("limit=0", "invalid_limit"), ("limit=x", "invalid_limit"), ("limit=101", "invalid_limit"),
                          ("before=abc", "invalid_before"), ("before=999999999", "invalid_cursor")):
        resp = await app_client.get(f"/rooms/{room.slug}/episodes?{query}", headers=headers)
        assert resp.status == 400 and (await resp.json())["error"] == reason, query
