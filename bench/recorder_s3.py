"""Episodes into a bucket: segment close -> listed, and the CPU the uploads cost.

    .venv/bin/python bench/recorder_s3.py [--seconds 40] [--segment-seconds 1] [--rounds 2]

Creates a throwaway database on the local PostgreSQL and a bucket on moto's
S3 server, started here as a child process on 127.0.0.1 (both removed at the
end).  One 1280x720 30 fps H.264 session (~2.5 Mbit/s, a keyframe every
segment, plus 48 kHz Opus in 20 ms packets) is pre-encoded, then fed in real
time (each frame at its arrival time) to a ``RoomRecording``, the way the SFU
fan-out feeds it, once per mode and round, modes alternating:

  feed only  the feeding loop alone (its CPU is subtracted from the others)
  local      storage.backend = local: segments written in place, playlist file rewritten
  s3         storage.backend = s3: written to the spool, uploaded (PUT + Content-MD5 by
             aiobotocore on its own loop), row added, spool copy deleted

Per run: CPU = user+system time of this process (the recorder, its writer
thread and the S3 client thread; moto's CPU is its own process's, reported
apart) over wall time; listing delay = from the writer muxing a segment's
last byte to the row that lists it (s3: after its upload), every segment.
The 1-minute load average is printed beside every figure: the machine is
shared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402
import av  # noqa: E402
import psutil  # noqa: E402
from aiobotocore.session import get_session  # noqa: E402

from odsmedia.media.frame import MediaFrame  # noqa: E402
from odsmedia.rooms import directory  # noqa: E402
from odsmedia.storage import migrate  # noqa: E402
from recorder.recorder import Recorder  # noqa: E402
from recorder.s3 import S3Storage  # noqa: E402
from recorder.storage import LocalStorage  # noqa: E402
from testsupport.counter import draw_counter  # noqa: E402
from testsupport.s3 import CREDENTIALS, MotoServer  # noqa: E402
from testsupport.synthetic import SyntheticSession, feed_realtime  # noqa: E402

ADMIN_DSN = os.environ.get("ODS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def encode(seconds: float, gop_seconds: float, fps: int = 30) -> list[MediaFrame]:
    width, height = 1280, 720
    encoder = av.CodecContext.create("libx264", "w")
    encoder.options = {"profile": "baseline", "preset": "ultrafast", "tune": "zerolatency",
                       "x264-params": "keyint=100000:scenecut=0:repeat-headers=1:bframes=0"}
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, 90000)
    encoder.framerate = fps
    encoder.bit_rate = 2_500_000
    step = 90000 // fps
    gop = max(1, round(gop_seconds * fps))
    band = width * 120
    frames = []
    for i in range(int(seconds * fps)):
        picture = draw_counter(i, width, height)
        luma = bytearray(bytes(picture.planes[0]))
        luma[height // 2 * width: height // 2 * width + band] = os.urandom(band)
        picture.planes[0].update(bytes(luma))
        picture.pts = i * step
        picture.time_base = encoder.time_base
        if i % gop == 0:   # the recorder asks for a keyframe every segment
            picture.pict_type = av.video.frame.PictureType.I
        for packet in encoder.encode(picture):
            frames.append(MediaFrame("video", "H264", bytes(packet), packet.pts, 90000, packet.is_keyframe,
                                     packet.pts / 90000))
    audio = SyntheticSession(seconds, video=False, audio_start=0.0, arrival0=0.0, jitter=0.0).frames
    return sorted(frames + audio, key=lambda f: f.arrival)


async def main(args) -> None:
    os.environ.update(CREDENTIALS)
    name = f"ods_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    moto = MotoServer()
    moto.start()
    moto_process = psutil.Process(moto.process.pid)
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    store = None
    try:
        async with get_session().create_client("s3", endpoint_url=moto.url, region_name="us-east-1") as s3:
            await s3.create_bucket(Bucket=bucket)
        await migrate(dsn)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        print(f"encoding {args.seconds:.0f} s of 720p30 H.264 + Opus ...", flush=True)
        frames = encode(args.seconds, args.segment_seconds)
        video_bytes = sum(len(f.data) for f in frames if f.kind == "video")
        print(f"input: {video_bytes * 8 / args.seconds / 1e6:.2f} Mbit/s, "
              f"{sum(1 for f in frames if f.kind == 'video')} video frames", flush=True)
        room = await directory.create(pool, f"bench-{uuid.uuid4().hex[:8]}", title="bench")
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            store = S3Storage(bucket, prefix="episodes/", endpoint_url=moto.url)
            # A node creates its client once (botocore loads its service model then): not per session.
            await asyncio.to_thread(store.prefixes)
            recorders = {
                "local": Recorder(pool, LocalStorage(tmp_path / "episodes"), node="bench",
                                  segment_seconds=args.segment_seconds, reconnect_grace=0),
                "s3": Recorder(pool, store, spool=LocalStorage(tmp_path / "spool"), node="bench",
                               segment_seconds=args.segment_seconds, reconnect_grace=0),
            }
            results: dict[str, list[tuple[float, float, float, float, list[float]]]] = {
                "feed only": [], "local": [], "s3": []}
            for round_ in range(args.rounds):
                for mode in ("feed only", "local", "s3"):
                    load0 = os.getloadavg()[0]
                    moto_cpu0 = sum(moto_process.cpu_times()[:2])
                    cpu, wall, recording = await feed_realtime(recorders.get(mode), room, frames)
                    assert recording is None or recording.status == "ready", recording.status
                    moto_cpu = sum(moto_process.cpu_times()[:2]) - moto_cpu0
                    load = (load0 + os.getloadavg()[0]) / 2
                    delays = [] if recording is None else [
                        (listed - segment.closed_at) * 1000 for segment, listed in recording.listed]
                    results[mode].append((cpu / wall, moto_cpu / wall, load, wall, delays))
                    extra = ""
                    if delays:
                        extra = (f", {len(delays)} segments, listed p50 {statistics.median(delays):.1f} ms "
                                 f"p99 {pct(delays, 99):.1f} ms")
                    print(f"round {round_ + 1} {mode}: {cpu / wall * 100:.2f}% of a core, "
                          f"moto {moto_cpu / wall * 100:.2f}%, load {load:.2f}{extra}", flush=True)
        await pool.close()

        base = statistics.median(r[0] for r in results["feed only"])
        print()
        print("| mode | % of one core (median) | minus feed loop | moto server % | listed p50 ms | listed p99 ms "
              "| listed max ms | segments | 1-min load avg |")
        print("|---|---|---|---|---|---|---|---|---|")
        for mode, runs in results.items():
            share = statistics.median(r[0] for r in runs)
            moto_share = statistics.median(r[1] for r in runs)
            loads = ", ".join(f"{r[2]:.1f}" for r in runs)
            delays = [d for r in runs for d in r[4]]
            timing = ("- | - | - | -" if not delays else
                      f"{statistics.median(delays):.1f} | {pct(delays, 99):.1f} | {max(delays):.1f} | {len(delays)}")
            print(f"| {mode} | {share * 100:.2f} | {(share - base) * 100:.2f} | {moto_share * 100:.2f} | "
                  f"{timing} | {loads} |")
        local = statistics.median(r[0] for r in results["local"])
        remote = statistics.median(r[0] for r in results["s3"])
        print(f"\nupload cost per recorded session (s3 minus local): {(remote - local) * 100:.2f}% of a core")
    finally:
        if store is not None:
            store.close()
        moto.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="length of the 720p session (max 600)")
    parser.add_argument("--segment-seconds", type=float, default=1.0, help="recording.segment_seconds")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three modes (max 10)")
    args = parser.parse_args()
    args.seconds = min(args.seconds, 600.0)
    args.rounds = max(1, min(args.rounds, 10))
    asyncio.run(main(args))
