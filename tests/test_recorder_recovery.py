"""Crash safety: a recording process is killed; the next start finalizes what is on disk."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

from conftest import REPO, make_config
from odsmedia.app import make_app
from recorder import episodes
from recorder.recorder import RECORDER
from recorder.recorder import local_node_id
from testsupport.synthetic import SyntheticSession, read_segment

# The recording process: a Recorder on the test database, fed a paced synthetic
# session; it prints each segment as it is listed and never gets to finish.
RECORDING_PROCESS = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from odsmedia.storage import connect
    from recorder.recorder import Recorder, local_node_id
    from recorder.storage import LocalStorage
    from testsupport.synthetic import SyntheticSession

    async def main(dsn, data_dir, room_id, slug):
        data_dir = Path(data_dir)
        db = await connect(dsn, max_size=2)
        recorder = Recorder(db, LocalStorage(data_dir / "episodes"), node=local_node_id(data_dir),
                            segment_seconds=1.0, reconnect_grace=0)
        recording = recorder.recording_for(int(room_id), slug, "Crashy")
        sinks = {"video": recording.add_track("video"), "audio": recording.add_track("audio")}
        frames = SyntheticSession(60.0, gop_seconds=0.5).frames
        listed = 0
        for i, frame in enumerate(frames):
            sinks[frame.kind].on_frame(frame)
            if i % 20 == 0:
                await asyncio.sleep(0.005)
            if len(recording.listed) != listed:
                listed = len(recording.listed)
                print("episode", recording.episode_id, "listed", listed, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(*sys.argv[1:]))
""")


async def test_killed_recording_is_finalized_as_interrupted_on_next_start(
        aiohttp_client, service_urls, room_factory, tmp_path):
    room = await room_factory()
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
        [sys.executable, "-c", RECORDING_PROCESS, service_urls.database_url, str(data_dir), str(room.id), room.slug],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    episode_id = None
    try:
        deadline = time.monotonic() + 60
        loop = asyncio.get_running_loop()
        while time.monotonic() < deadline:
            line = await loop.run_in_executor(None, process.stdout.readline)
            if not line:
                raise AssertionError("recording process died: " + process.stderr.read()[-2000:])
            _, episode_id, _, listed = line.split()
            if int(listed) >= 4:
                break
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(10)

    config = make_config(service_urls, data_dir, ODS_RECORDING_SEGMENT_SECONDS="1")
    node = local_node_id(data_dir)
    # What the crash left: a live row, an EVENT playlist without ENDLIST, whole segments.
    app = make_app(config)
    client = await aiohttp_client(app)   # start-up runs the recovery
    recorder = client.app[RECORDER]
    db = recorder.db
    episode = await episodes.get(db, int(episode_id))
    assert episode.node == node
    assert episode.status == "interrupted" and episode.ended_at is not None
    rows = await episodes.segments(db, episode.id)
    folder = recorder.storage.root / episode.storage_key
    files = sorted(p.name for p in folder.iterdir() if p.name.endswith(".m4s"))
    assert [r.name for r in rows] == files and len(files) >= 4
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    assert episode.segment_count == len(rows)
    text = (folder / "index.m3u8").read_text()
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in text and text.rstrip().endswith("#EXT-X-ENDLIST")
    assert [l for l in text.splitlines() if l.endswith(".m4s")] == files
    # Every closed segment is playable, and together they hold the frames in order.
    init = (folder / "init-0.mp4").read_bytes()
    counters = []
    for row in rows:
        counters += [c for _, c in read_segment(init, (folder / row.name).read_bytes()).video]
    assert counters == list(range(len(counters))) and len(counters) >= 4 * 30

    resp = await client.get(f"/episodes/{episode.id}/index.m3u8")
    assert resp.status == 200 and (await resp.text()).rstrip().endswith("#EXT-X-ENDLIST")


async def test_recovery_lists_segments_the_crash_kept_out_of_the_table(
        aiohttp_client, service_urls, db, room_factory, tmp_path):
    """The crash window between a segment file and its row: the file is listed from disk."""
    room = await room_factory()
    data_dir = tmp_path / "data"
    config = make_config(service_urls, data_dir, ODS_RECORDING_SEGMENT_SECONDS="1",
                         ODS_RECORDING_RECONNECT_GRACE="0")
    client = await aiohttp_client(make_app(config))
    recorder = client.app[RECORDER]
    recording = recorder.recording_for(room.id, room.slug)

    sinks = {"video": recording.add_track("video"), "audio": recording.add_track("audio")}
    for frame in SyntheticSession(3.0, gop_seconds=0.5).frames:
        sinks[frame.kind].on_frame(frame)
    for sink in sinks.values():
        sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 30)
    episode_id = recording.episode_id
    # Rewind the episode to how a crash right after writing segment 3's file leaves it:
    # still live, no row for segment 3, an unfinished temp file, an EVENT playlist.
    await db.execute("DELETE FROM segments WHERE episode_id = $1 AND seq = 3", episode_id)
    await db.execute("UPDATE episodes SET status = 'live', ended_at = NULL, segment_count = 2 WHERE id = $1",
                     episode_id)
    folder = recorder.storage.root / recording.storage_key
    (folder / ".00004-0.m4s.abcd.partial").write_bytes(b"\x00\x00\x00\x10moof")
    playlist = (folder / "index.m3u8").read_text()
    (folder / "index.m3u8").write_text(playlist.replace("#EXT-X-ENDLIST\n", "").replace("VOD", "EVENT"))

    # Files no row points to (their room was deleted) are swept at start-up.
    orphan = recorder.storage.root / "gone-room-0123456789ab"
    orphan.mkdir()
    (orphan / "00001-0.m4s").write_bytes(b"x")

    # A second node's live episode is not ours to finalize.
    other_room = await room_factory()
    other = await episodes.create(db, other_room.id, title="elsewhere", storage_key="x-1", node="other-node")

    await client.close()
    client = await aiohttp_client(make_app(config))
    episode = await episodes.get(db, episode_id)
    assert episode.status == "interrupted"
    rows = await episodes.segments(db, episode_id)
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[2].start_offset == rows[1].start_offset + rows[1].duration
    assert abs(rows[2].duration - 1.0) < 0.05 and rows[2].init_name == "init-0.mp4"
    assert episode.segment_count == 3 and abs(episode.duration - 3.0) < 0.05
    assert not (folder / ".00004-0.m4s.abcd.partial").exists()
    text = (folder / "index.m3u8").read_text()
    assert "00003-0.m4s" in text and text.rstrip().endswith("#EXT-X-ENDLIST")
    assert (await episodes.get(db, other.id)).status == "live"
    assert not orphan.exists() and folder.exists()


async def test_killed_server_with_a_whip_publisher_restarts_and_finalizes(service_urls, db, room_factory,
                                                                          token_factory, tmp_path):
    """The product path end to end: `odsmedia serve` records a WHIP publisher, gets SIGKILLed,
    and the next `odsmedia serve` finalizes the episode before serving it."""
    import re

    import aiohttp
    from aiortc import RTCSessionDescription

    from conftest import ODSMEDIA, odsmedia_env
    from odsmedia.media import ice
    from testsupport.peers import whip_offer

    ice.configure(["127.0.0.1"])     # this test process's peer: loopback only
    room = await room_factory()
    token = await token_factory(room, "host")
    env = odsmedia_env(service_urls, tmp_path / "data", ODS_HTTP_PORT="0", ODS_RECORDING_SEGMENT_SECONDS="1")
    loop = asyncio.get_running_loop()

    async def start_server():
        # One process: SIGKILL is its crash (a supervisor's workers would stop cleanly without it).
        process = subprocess.Popen(ODSMEDIA + ["serve", "--workers", "1"], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = await loop.run_in_executor(None, process.stdout.readline)
            if not line:
                break
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                return process, match.group(1)
        process.kill()
        raise AssertionError("server did not start: " + process.stderr.read()[-2000:])

    publisher, offer = await whip_offer()
    server, base = await start_server()
    try:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{base}/rooms/{room.slug}/whip", data=offer,
                                   headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"})
            assert resp.status == 201, await resp.text()
            await publisher.setRemoteDescription(RTCSessionDescription(await resp.text(), "answer"))
        deadline = time.monotonic() + 60
        while True:
            row = await db.fetchrow("SELECT id, segment_count, status FROM episodes WHERE room_id = $1", room.id)
            if row is not None and row["segment_count"] >= 3:
                break
            assert time.monotonic() < deadline, "the server recorded nothing"
            await asyncio.sleep(0.1)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
    finally:
        await publisher.close()
        if server.poll() is None:
            server.kill()
            server.wait(10)
    episode_id = row["id"]
    assert (await episodes.get(db, episode_id)).status == "live"   # what the crash left

    server, base = await start_server()
    try:
        episode = await episodes.get(db, episode_id)
        assert episode.status == "interrupted" and episode.segment_count >= 3
        async with aiohttp.ClientSession() as http:
            resp = await http.get(f"{base}/episodes/{episode_id}/index.m3u8")
            text = await resp.text()
            assert resp.status == 200 and text.rstrip().endswith("#EXT-X-ENDLIST")
            names = [line for line in text.splitlines() if line.endswith(".m4s")]
            assert len(names) == episode.segment_count
            init = await (await http.get(f"{base}/episodes/{episode_id}/init-0.mp4")).read()
            for name in names:
                data = await (await http.get(f"{base}/episodes/{episode_id}/{name}")).read()
                assert read_segment(init, data).video, name
    finally:
        server.send_signal(signal.SIGTERM)
        await loop.run_in_executor(None, server.wait, 30)
