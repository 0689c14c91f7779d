"""Episodes in an S3-compatible bucket (storage.backend = s3), against moto's server on loopback.

Every test lists the bucket itself (its own client straight to the server) to
check what the product stored or removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiobotocore.session import get_session
from prometheus_client import REGISTRY

from conftest import ODSMEDIA, REPO, make_config, odsmedia_env
from odsmedia.app import make_app
from odsmedia.config import ConfigError
from recorder import episodes
from recorder.recorder import RECORDER
from recorder.routes import PURGER
from testsupport.s3 import CREDENTIALS, MotoServer, S3Gate
from testsupport.synthetic import SyntheticSession, read_segment

PREFIX = "episodes/"


@pytest.fixture(scope="session")
def moto():
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def gate(moto, monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    hop = S3Gate(moto.url)
    await hop.start()
    yield hop
    await hop.close()


@pytest.fixture
async def bucket(moto, gate):
    name = f"ods-{uuid.uuid4().hex[:12]}"
    async with _client(moto) as s3:
        await s3.create_bucket(Bucket=name)
    return name


def _client(moto):
    return get_session().create_client(
        "s3", endpoint_url=moto.url, region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


async def bucket_objects(moto, bucket: str) -> dict[str, str]:
    """key -> ETag of every object in the bucket, listed by the test's own client."""
    found: dict[str, str] = {}
    async with _client(moto) as s3:
        async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", ()):
                found[item["Key"]] = item["ETag"].strip('"')
    return found


def s3_config(service_urls, data_dir: Path, gate: S3Gate, bucket: str, **extra: str):
    return make_config(
        service_urls, data_dir, ODS_RECORDING_SEGMENT_SECONDS="1", ODS_RECORDING_RECONNECT_GRACE="0",
        ODS_STORAGE_BACKEND="s3", ODS_STORAGE_BUCKET=bucket, ODS_STORAGE_PREFIX=PREFIX,
        ODS_STORAGE_ENDPOINT_URL=gate.url, ODS_STORAGE_UPLOAD_RETRY_MAX="0.5", **extra,
    )


def feed(recording, seconds: float, screen: bool = False):
    sinks = {"video": recording.add_track("video"), "audio": recording.add_track("audio")}
    session = SyntheticSession(seconds, gop_seconds=0.5)
    for frame in session.frames:
        sinks[frame.kind].on_frame(frame)
    if screen:
        # A screen share alongside: its own rendition (screen.* files).
        sinks["screen"] = recording.add_track("video", source="screen")
        for frame in SyntheticSession(seconds, audio=False, gop_seconds=0.5, first_index=1000, seed=2).frames:
            sinks["screen"].on_frame(frame)
    return sinks, sum(1 for f in session.frames if f.kind == "video")


async def record(app, room, seconds: float = 3.0, screen: bool = False) -> tuple[int, int]:
    recording = app[RECORDER].recording_for(room.id, room.slug, room.title)
    sinks, video_frames = feed(recording, seconds, screen)
    for sink in sinks.values():
        sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 60)
    assert recording.status == "ready"
    return recording.episode_id, video_frames


def sample(name: str) -> float:
    """A sample of this process's /metrics registry (process-wide: tests compare with a start)."""
    return REGISTRY.get_sample_value(name) or 0.0


async def poll(predicate, timeout: float = 30.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(step)
    raise AssertionError("condition not reached before the deadline")


def expected_keys(storage_key: str, rows) -> set[str]:
    names = {r.init_name for r in rows if r.init_name} | {r.name for r in rows}
    return {f"{PREFIX}{storage_key}/{n}" for n in names}


async def fetch_redirected(client, path: str, http: aiohttp.ClientSession) -> tuple[str, bytes, str]:
    """(presigned URL, bytes the bucket served for it, the bucket's ETag)."""
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 302, await resp.text()
    url = resp.headers["Location"]
    async with http.get(url) as got:
        assert got.status == 200, await got.text()
        return url, await got.read(), got.headers["ETag"].strip('"')


async def test_record_on_node_a_replay_from_node_b(aiohttp_client, service_urls, room_factory, tmp_path,
                                                   moto, gate, bucket):
    node_a = await aiohttp_client(make_app(s3_config(service_urls, tmp_path / "a", gate, bucket)))
    node_b = await aiohttp_client(make_app(s3_config(service_urls, tmp_path / "b", gate, bucket)))
    room = await room_factory()
    uploaded_before = (sample("ods_recorder_uploads_total"), sample("ods_recorder_upload_bytes_total"))
    episode_id, video_frames = await record(node_a.app, room, 3.0)

    db = node_a.app[RECORDER].db
    episode = await episodes.get(db, episode_id)
    rows = await episodes.segments(db, episode_id)
    assert episode.status == "ready" and len(rows) == 3
    # The bucket holds exactly the init section and the listed segments (no playlist file:
    # playlists come from the rows), each stored with the MD5 the uploader sent.
    objects = await bucket_objects(moto, bucket)
    assert set(objects) == expected_keys(episode.storage_key, rows)
    assert gate.forwarded["PUT"] == len(objects)     # each file uploaded once
    # Node A kept nothing once the episode was finalized.
    assert not (tmp_path / "a" / "spool" / episode.storage_key).exists()
    assert not (tmp_path / "b" / "spool" / episode.storage_key).exists()

    resp = await node_b.get(f"/episodes/{episode_id}/index.m3u8")
    assert resp.status == 200
    text = await resp.text()
    assert [l for l in text.splitlines() if l.endswith(".m4s")] == [r.name for r in rows]
    assert '#EXT-X-MAP:URI="init-0.mp4"' in text and text.rstrip().endswith("#EXT-X-ENDLIST")

    counters = []
    async with aiohttp.ClientSession() as http:
        url, init, etag = await fetch_redirected(node_b, f"/episodes/{episode_id}/init-0.mp4", http)
        assert url.startswith(gate.url + f"/{bucket}/{PREFIX}{episode.storage_key}/init-0.mp4?")
        query = parse_qs(urlsplit(url).query)
        assert query["X-Amz-Expires"] == ["300"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
        assert etag == hashlib.md5(init).hexdigest()
        for row in rows:
            _, data, etag = await fetch_redirected(node_b, f"/episodes/{episode_id}/{row.name}", http)
            assert len(data) == row.size_bytes and etag == hashlib.md5(data).hexdigest()
            assert objects[f"{PREFIX}{episode.storage_key}/{row.name}"] == etag
            counters += [c for _, c in read_segment(init, data).video]
    assert counters == list(range(video_frames))
    # Uploads on /metrics: each object once, every byte of it.
    assert (sample("ods_recorder_uploads_total") - uploaded_before[0],
            sample("ods_recorder_upload_bytes_total") - uploaded_before[1]) == \
        (len(objects), len(init) + sum(r.size_bytes for r in rows))

    # Proxy mode on a third node: bytes through the node, with Range and ETag.
    node_c = await aiohttp_client(make_app(s3_config(service_urls, tmp_path / "c", gate, bucket,
                                                     ODS_STORAGE_SERVE="proxy")))
    name = rows[1].name
    resp = await node_c.get(f"/episodes/{episode_id}/{name}")
    assert resp.status == 200
    whole = await resp.read()
    etag = resp.headers["ETag"]
    assert hashlib.md5(whole).hexdigest() == objects[f"{PREFIX}{episode.storage_key}/{name}"]
    resp = await node_c.get(f"/episodes/{episode_id}/{name}", headers={"Range": "bytes=100-1099"})
    assert resp.status == 206 and await resp.read() == whole[100:1100]
    assert resp.headers["Content-Range"] == f"bytes 100-1099/{len(whole)}"
    resp = await node_c.get(f"/episodes/{episode_id}/{name}", headers={"If-None-Match": etag})
    assert resp.status == 304
    resp = await node_c.get(f"/episodes/{episode_id}/init-0.mp4", headers={"Range": "bytes=0-7"})
    assert resp.status == 206 and await resp.read() == init[:8]
    resp = await node_c.get(f"/episodes/{episode_id}/00099-0.m4s")
    assert resp.status == 404 and (await resp.json())["error"] == "segment_not_found"


async def test_a_missing_bucket_stops_start_up_with_a_clear_error(aiohttp_client, service_urls, tmp_path, gate):
    with pytest.raises(ConfigError, match="invalid storage settings: bucket 'no-such-bucket-here'"):
        await aiohttp_client(make_app(s3_config(service_urls, tmp_path / "data", gate, "no-such-bucket-here")))


async def test_the_s3_backend_without_a_bucket_is_a_config_error(aiohttp_client, service_urls, tmp_path):
    config = make_config(service_urls, tmp_path / "data", ODS_STORAGE_BACKEND="s3")
    with pytest.raises(ConfigError, match="invalid storage.bucket"):
        await aiohttp_client(make_app(config))


async def test_bucket_refusing_writes_delays_listing_but_loses_nothing(
        aiohttp_client, service_urls, room_factory, tmp_path, moto, gate, bucket):
    client = await aiohttp_client(make_app(s3_config(service_urls, tmp_path / "data", gate, bucket)))
    recorder = client.app[RECORDER]
    room = await room_factory()
    backlog = sample("ods_recorder_upload_backlog")
    failures = sample("ods_recorder_upload_failures_total")
    gate.refuse_writes = True
    recording = recorder.recording_for(room.id, room.slug, room.title)
    sinks, video_frames = feed(recording, 4.0)
    await asyncio.wait_for(recording.created.wait(), 30)
    spool = tmp_path / "data" / "spool" / recording.storage_key

    async def spooled():
        names = [p.name for p in spool.iterdir() if p.name.endswith(".m4s")] if spool.exists() else []
        # (The uploader sees a failure once the S3 client has given up its own retries of the 503.)
        return len(names) >= 3 and gate.refused >= 2 and sample("ods_recorder_upload_failures_total") > failures

    # The writer goes on into the spool while the bucket refuses: nothing is listed meanwhile.
    await poll(spooled)
    assert len(recording.listed) == 0
    assert sample("ods_recorder_upload_backlog") - backlog >= 3
    # Each failure the uploader counted was a refusal at the gate (which can count more: the S3
    # client retries a 503 itself first).
    assert 1 <= sample("ods_recorder_upload_failures_total") - failures <= gate.refused
    assert await recorder.db.fetchval("SELECT count(*) FROM segments WHERE episode_id = $1",
                                      recording.episode_id) == 0
    assert await bucket_objects(moto, bucket) == {}
    resp = await client.get(f"/episodes/{recording.episode_id}/index.m3u8")
    assert resp.status == 404 and (await resp.json())["error"] == "playlist_not_ready"

    gate.refuse_writes = False
    for sink in sinks.values():
        sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 60)
    assert recording.status == "ready"
    assert sample("ods_recorder_upload_backlog") == backlog
    rows = await episodes.segments(recorder.db, recording.episode_id)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1)) and len(rows) == 4
    objects = await bucket_objects(moto, bucket)
    assert set(objects) == expected_keys(recording.storage_key, rows)
    assert not spool.exists()
    async with _client(moto) as s3:
        async def get(name):
            obj = await s3.get_object(Bucket=bucket, Key=f"{PREFIX}{recording.storage_key}/{name}")
            async with obj["Body"] as body:
                return await body.read()

        init = await get("init-0.mp4")
        counters = []
        for row in rows:
            counters += [c for _, c in read_segment(init, await get(row.name)).video]
    assert counters == list(range(video_frames))


async def test_presigned_urls_expire(aiohttp_client, service_urls, room_factory, tmp_path, moto, gate, bucket):
    client = await aiohttp_client(make_app(s3_config(service_urls, tmp_path / "data", gate, bucket,
                                                     ODS_STORAGE_PRESIGN_SECONDS="3")))
    room = await room_factory()
    episode_id, _ = await record(client.app, room, 1.5)
    rows = await episodes.segments(client.app[RECORDER].db, episode_id)
    path = f"/episodes/{episode_id}/{rows[0].name}"
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Cache-Control"] == "private, max-age=1"
    url = resp.headers["Location"]
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["3"]
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as got:
            assert got.status == 200 and len(await got.read()) == rows[0].size_bytes

        async def refused():
            async with http.get(url) as got:
                return got.status == 403 and "Request has expired" in await got.text()

        await poll(refused, timeout=15, step=0.25)
        # The node hands out a fresh URL that works.
        _, data, _ = await fetch_redirected(client, path, http)
        assert len(data) == rows[0].size_bytes


async def test_deletion_leaves_no_object(aiohttp_client, service_urls, db, room_factory, token_factory, tmp_path,
                                         moto, gate, bucket):
    client = await aiohttp_client(make_app(s3_config(service_urls, tmp_path / "data", gate, bucket,
                                                     ODS_RECORDING_RETENTION_DAYS="2")))
    room, other = await room_factory(), await room_factory()
    first, _ = await record(client.app, room, 1.5)
    second, _ = await record(client.app, room, 1.5)
    third, _ = await record(client.app, other, 1.5)
    keys = {i: (await episodes.get(db, i)).storage_key for i in (first, second, third)}

    def under(objects, episode_id):
        return [k for k in objects if k.startswith(f"{PREFIX}{keys[episode_id]}/")]

    objects = await bucket_objects(moto, bucket)
    assert all(len(under(objects, i)) == 3 for i in keys)       # init + 2 segments each

    # The replay API: rows and objects go at once.
    host = await token_factory(room, role="host")
    resp = await client.delete(f"/episodes/{first}", headers={"Authorization": f"Bearer {host}"})
    assert resp.status == 204
    objects = await bucket_objects(moto, bucket)
    assert under(objects, first) == [] and len(under(objects, second)) == 3
    assert await db.fetchval("SELECT count(*) FROM episode_purges WHERE storage_key = $1", keys[first]) == 0

    # A room deleted (its episodes by cascade) while the bucket refuses: queued, purged once it is back.
    # (The database is shared by the whole run: other tests' queue rows may be purged too,
    # so the checks are on this test's keys and bucket, not on pass counts.)
    purger = client.app[PURGER]

    async def queued(episode_id):
        return await db.fetchval("SELECT count(*) FROM episode_purges WHERE storage_key = $1", keys[episode_id])

    gate.refuse_writes = True
    await db.execute("DELETE FROM rooms WHERE id = $1", other.id)
    await purger.run_once()
    assert len(under(await bucket_objects(moto, bucket), third)) == 3
    assert await queued(third) == 1 and gate.refused >= 1
    gate.refuse_writes = False
    purged = sample("ods_recorder_purged_total")
    await purger.run_once()
    assert under(await bucket_objects(moto, bucket), third) == [] and await queued(third) == 0
    assert sample("ods_recorder_purged_total") - purged >= 1      # (other tests' queued rows may go too)

    # Retention: an episode that ended longer ago than recording.retention_days goes with its media.
    await db.execute("UPDATE episodes SET ended_at = now() - interval '3 days' WHERE id = $1", second)
    await purger.run_once()
    assert await episodes.get(db, second) is None
    assert await bucket_objects(moto, bucket) == {}
    assert await db.fetchval("SELECT count(*) FROM episode_purges WHERE storage_key = ANY($1::text[])",
                             list(keys.values())) == 0


# A recording process on the bucket: prints each listing, never finishes.
RECORDING_PROCESS = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from odsmedia.storage import connect
    from recorder.recorder import Recorder, local_node_id
    from recorder.s3 import S3Storage
    from recorder.storage import LocalStorage
    from testsupport.synthetic import SyntheticSession

    async def main(dsn, data_dir, room_id, slug, endpoint, bucket):
        data_dir = Path(data_dir)
        db = await connect(dsn, max_size=2)
        store = S3Storage(bucket, prefix="episodes/", endpoint_url=endpoint)
        recorder = Recorder(db, store, spool=LocalStorage(data_dir / "spool"), node=local_node_id(data_dir),
                            segment_seconds=1.0, reconnect_grace=0, upload_retry_max=0.5)
        recording = recorder.recording_for(int(room_id), slug, "Crashy")
        sinks = {"video": recording.add_track("video"), "audio": recording.add_track("audio")}
        listed = 0
        for i, frame in enumerate(SyntheticSession(60.0, gop_seconds=0.5).frames):
            sinks[frame.kind].on_frame(frame)
            if i % 20 == 0:
                await asyncio.sleep(0.005)
            if len(recording.listed) != listed:
                listed = len(recording.listed)
                print("episode", recording.episode_id, recording.storage_key, "listed", listed, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(*sys.argv[1:]))
""")


async def test_sigkill_during_uploads_then_restart_uploads_the_spool(
        aiohttp_client, service_urls, room_factory, tmp_path, moto, gate, bucket):
    room = await room_factory()
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
        [sys.executable, "-c", RECORDING_PROCESS, service_urls.database_url, str(data_dir), str(room.id),
         room.slug, gate.url, bucket],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    loop = asyncio.get_running_loop()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = await loop.run_in_executor(None, process.stdout.readline)
            if not line:
                raise AssertionError("recording process died: " + process.stderr.read()[-2000:])
            _, episode_id, storage_key, _, listed = line.split()
            if int(listed) >= 2:
                break
        # Uploads start failing; segments pile up in the spool; then the process is killed.
        gate.refuse_writes = True
        spool = data_dir / "spool" / storage_key

        async def piled_up():
            return len([p for p in spool.iterdir() if p.name.endswith(".m4s")]) >= 3

        await poll(piled_up)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(10)
    left = sorted(p.name for p in spool.iterdir() if p.name.endswith(".m4s"))
    gate.refuse_writes = False

    client = await aiohttp_client(make_app(s3_config(service_urls, data_dir, gate, bucket)))  # recovery
    db = client.app[RECORDER].db
    episode = await episodes.get(db, int(episode_id))
    rows = await episodes.segments(db, episode.id)
    # Every segment the process wrote is listed, in order, and in the bucket; the spool is empty.
    assert episode.status == "interrupted" and episode.segment_count == len(rows)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= int(listed) + 3
    assert set(left) <= {r.name for r in rows}
    assert set(await bucket_objects(moto, bucket)) == expected_keys(storage_key, rows)
    assert not spool.exists()
    resp = await client.get(f"/episodes/{episode.id}/index.m3u8")
    text = await resp.text()
    assert [l for l in text.splitlines() if l.endswith(".m4s")] == [r.name for r in rows]
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    counters = []
    async with aiohttp.ClientSession() as http:
        _, init, _ = await fetch_redirected(client, f"/episodes/{episode.id}/init-0.mp4", http)
        for row in rows:
            _, data, _ = await fetch_redirected(client, f"/episodes/{episode.id}/{row.name}", http)
            counters += [c for _, c in read_segment(init, data).video]
    assert counters == list(range(len(counters))) and len(counters) >= len(rows) * 30 - 30


async def test_episode_upload_all_moves_local_episodes_idempotently(
        aiohttp_client, service_urls, room_factory, tmp_path, moto, gate, bucket):
    data_dir = tmp_path / "data"
    local = await aiohttp_client(make_app(make_config(
        service_urls, data_dir, ODS_RECORDING_SEGMENT_SECONDS="1", ODS_RECORDING_RECONNECT_GRACE="0")))
    room = await room_factory()
    episode_id, _ = await record(local.app, room, 2.0, screen=True)
    db = local.app[RECORDER].db
    episode = await episodes.get(db, episode_id)
    folder = data_dir / "episodes" / episode.storage_key
    before = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.suffix != ".m3u8"}
    rows = await episodes.segments(db, episode_id, rendition=None)     # camera and screen files
    assert any(r.rendition == "screen" for r in rows) and any(r.rendition == "" for r in rows)

    env = odsmedia_env(service_urls, data_dir, ODS_STORAGE_BACKEND="s3", ODS_STORAGE_BUCKET=bucket,
                       ODS_STORAGE_PREFIX=PREFIX, ODS_STORAGE_ENDPOINT_URL=gate.url, **CREDENTIALS)

    async def upload_all() -> tuple[int, list[dict]]:
        proc = await asyncio.create_subprocess_exec(
            *ODSMEDIA, "episode", "upload", "--all", env=env, cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()[-2000:]
        return proc.returncode, [json.loads(l) for l in out.decode().splitlines() if l.strip()]

    _, results = await upload_all()
    assert results == [{"id": episode_id, "uploaded": len(before), "state": "uploaded"}]
    objects = await bucket_objects(moto, bucket)
    assert objects == {f"{PREFIX}{episode.storage_key}/{n}": md5 for n, md5 in before.items()}
    assert set(objects) == expected_keys(episode.storage_key, rows)
    assert not folder.exists()
    # Again: nothing left to move, nothing changes.
    _, results = await upload_all()
    assert results == []
    assert await bucket_objects(moto, bucket) == objects

    # A node on the bucket replays it.
    node = await aiohttp_client(make_app(s3_config(service_urls, tmp_path / "b", gate, bucket)))
    async with aiohttp.ClientSession() as http:
        for row in rows:
            _, data, _ = await fetch_redirected(node, f"/episodes/{episode_id}/{row.name}", http)
            assert hashlib.md5(data).hexdigest() == before[row.name]

    # `odsmedia episode delete` on the bucket: rows and objects go.
    proc = await asyncio.create_subprocess_exec(
        *ODSMEDIA, "episode", "delete", str(episode_id), env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert await episodes.get(db, episode_id) is None
    assert await bucket_objects(moto, bucket) == {}

    # Without the s3 backend the command refuses, clearly.
    proc = await asyncio.create_subprocess_exec(
        *ODSMEDIA, "episode", "upload", "--all", env=odsmedia_env(service_urls, data_dir), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and b"storage.backend = s3" in err


async def test_shutdown_while_the_bucket_refuses_leaves_the_spool_for_the_next_start(
        aiohttp_client, service_urls, db, room_factory, tmp_path, moto, gate, bucket, monkeypatch):
    from recorder import routes

    monkeypatch.setattr(routes, "UPLOAD_SHUTDOWN_GRACE", 0.5)
    data_dir = tmp_path / "data"
    client = await aiohttp_client(make_app(s3_config(service_urls, data_dir, gate, bucket)))
    recorder = client.app[RECORDER]
    room = await room_factory()
    gate.refuse_writes = True
    recording = recorder.recording_for(room.id, room.slug, room.title)
    _, video_frames = feed(recording, 3.0)
    await asyncio.wait_for(recording.created.wait(), 30)
    spool = data_dir / "spool" / recording.storage_key

    async def spooled():
        return spool.exists() and len([p for p in spool.iterdir() if p.name.endswith(".m4s")]) >= 2

    await poll(spooled)
    await client.close()     # shutdown: the grace runs out, the recording is cancelled
    episode = await episodes.get(db, recording.episode_id)
    assert episode.status == "live" and spool.exists()

    gate.refuse_writes = False
    client = await aiohttp_client(make_app(s3_config(service_urls, data_dir, gate, bucket)))
    episode = await episodes.get(db, recording.episode_id)
    rows = await episodes.segments(db, episode.id)
    assert episode.status == "interrupted" and len(rows) == 3
    assert set(await bucket_objects(moto, bucket)) == expected_keys(episode.storage_key, rows)
    assert not spool.exists()
    counters = []
    async with aiohttp.ClientSession() as http:
        _, init, _ = await fetch_redirected(client, f"/episodes/{episode.id}/init-0.mp4", http)
        for row in rows:
            _, data, _ = await fetch_redirected(client, f"/episodes/{episode.id}/{row.name}", http)
            counters += [c for _, c in read_segment(init, data).video]
    assert counters == list(range(video_frames))


async def test_whip_session_on_node_a_is_replayed_live_and_after_from_node_b(
        aiohttp_client, service_urls, room_factory, token_factory, tmp_path, moto, gate, bucket):
    """An aiortc publisher over WHIP to node A (SFU fan-out -> recorder -> bucket); viewers of
    node B follow the episode while it is live, then replay it whole."""
    import io

    import av
    from aiortc import RTCSessionDescription

    from testsupport.peers import read_counter, whip_offer

    node_a = await aiohttp_client(make_app(s3_config(service_urls, tmp_path / "a", gate, bucket)))
    node_b = await aiohttp_client(make_app(s3_config(service_urls, tmp_path / "b", gate, bucket)))
    recorder = node_a.app[RECORDER]
    room = await room_factory()
    host = {"Authorization": f"Bearer {await token_factory(room, 'host')}"}
    publisher, offer = await whip_offer()
    try:
        resp = await node_a.post(f"/rooms/{room.slug}/whip", data=offer,
                                 headers={**host, "Content-Type": "application/sdp"})
        assert resp.status == 201, await resp.text()
        location = resp.headers["Location"]
        await publisher.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))

        async def listed_three():
            recording = recorder.recordings.get(room.slug)
            return recording if recording is not None and len(recording.listed) >= 3 else None

        recording = await poll(listed_three, timeout=60)
        # Live, from the other node: an EVENT playlist of what A has uploaded so far.
        resp = await node_b.get(f"/episodes/{recording.episode_id}/index.m3u8")
        live_text = await resp.text()
        assert resp.status == 200 and "#EXT-X-PLAYLIST-TYPE:EVENT" in live_text
        assert "#EXT-X-ENDLIST" not in live_text
        assert len([l for l in live_text.splitlines() if l.endswith(".m4s")]) >= 3
        assert (await node_a.delete(location, headers=host)).status == 200
        await asyncio.wait_for(recording.done.wait(), 30)
    finally:
        await publisher.close()

    episode = await episodes.get(recorder.db, recording.episode_id)
    rows = await episodes.segments(recorder.db, episode.id)
    assert episode.status == "ready" and len(rows) >= 3
    assert set(await bucket_objects(moto, bucket)) == expected_keys(episode.storage_key, rows)
    resp = await node_b.get(f"/episodes/{episode.id}/index.m3u8")
    text = await resp.text()
    assert [l for l in text.splitlines() if l.endswith(".m4s")] == [r.name for r in rows]
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    counters: list[int] = []
    async with aiohttp.ClientSession() as http:
        inits: dict[str, bytes] = {}
        for row in rows:
            if row.init_name not in inits:
                _, inits[row.init_name], _ = await fetch_redirected(
                    node_b, f"/episodes/{episode.id}/{row.init_name}", http)
            _, data, _ = await fetch_redirected(node_b, f"/episodes/{episode.id}/{row.name}", http)
            with av.open(io.BytesIO(inits[row.init_name] + data), format="mp4") as container:
                counters += [read_counter(frame) for frame in container.decode(video=0)]
    # Loopback: the publisher's frames, in order, none lost between node A and node B's replay.
    assert counters and all(b == a + 1 for a, b in zip(counters, counters[1:]))
