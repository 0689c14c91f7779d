"""Recorder cost, segment listing delay, and long-run A/V sync.

    .venv/bin/python bench/recorder.py [--seconds 20] [--sources-seconds 20] [--rounds 2] [--sync-minutes 10]

Creates a throwaway database on the local PostgreSQL (dropped at the end)
and records into a temporary directory.

1. CPU per recorded session.  One 1280x720 30 fps session (H.264 constrained
   baseline at ~2.5 Mbit/s, content with a noisy band so the encoder spends
   its bitrate, plus 48 kHz Opus) is pre-encoded, then fed in real time (each
   frame at its arrival time) to a ``RoomRecording``, the way the SFU fan-out
   feeds it.  Process CPU time (user+sys) over wall time, same process, same
   input, one after the other:
     feed only     the feeding loop with a sink that drops every frame (overhead, subtracted)
     remux         the recorder as shipped: H.264 remuxed into fMP4
     remux + AAC   the same with recording.audio_codec = aac (Opus decoded, AAC encoded)
     transcode     the same input decoded and re-encoded (libx264 ultrafast) before the
                   recorder: what a transcoding recorder would spend
     vp8 input     the same picture sent as VP8: the recorder's VP8 path (decode + x264,
                   in the writer thread)
1b. CPU per source (``--sources-seconds``): a live-coding session, screen 1920x1080
   30 fps H.264 (~3 Mbit/s) + camera 1280x720 30 fps (~2.5 Mbit/s) + Opus, each
   video source its own rendition (audio muxed into both), against the
   single-source session (camera + Opus) in the same run, rounds alternating:
     feed only     the pacing loop over the three-source input (subtracted)
     camera only   camera 720p + Opus: one rendition
     screen+camera screen 1080p + camera 720p + Opus: two renditions
2. Segment close -> listed: from the moment the writer thread muxed a segment's
   last byte to the moment the playlist that lists it was written (row inserted
   first), for every segment of the remux run.
3. A/V sync over ``--sync-minutes`` (320x180, fed as fast as the writer takes
   it, arrival times synthetic with 10 ms jitter and the mic starting 0.3 s
   after the camera): every segment decoded with PyAV; the offset between
   each audio beep (one per second of source time) and the video frame
   captured at the same instant; frame counter gaps.
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

from odsmedia.media.frame import MediaFrame  # noqa: E402
from odsmedia.rooms import directory  # noqa: E402
from odsmedia.storage import migrate  # noqa: E402
from recorder import episodes  # noqa: E402
from recorder.recorder import Recorder  # noqa: E402
from recorder.storage import LocalStorage  # noqa: E402
from testsupport.counter import draw_counter  # noqa: E402
from testsupport.synthetic import SyntheticSession, feed_realtime, read_segment  # noqa: E402

ADMIN_DSN = os.environ.get("ODS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def encode_720p(seconds: float, codec: str, fps: int = 30, bitrate: int = 2_500_000) -> list[MediaFrame]:
    return encode_video(seconds, codec, 1280, 720, fps, bitrate)


def encode_video(seconds: float, codec: str, width: int, height: int, fps: int = 30,
                 bitrate: int = 2_500_000) -> list[MediaFrame]:
    if codec == "VP8":
        encoder = av.CodecContext.create("libvpx", "w")
        encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
                           "kf-max-dist": "100000", "auto-alt-ref": "0"}
    else:
        encoder = av.CodecContext.create("libx264", "w")
        encoder.options = {"profile": "baseline", "preset": "ultrafast", "tune": "zerolatency",
                           "x264-params": "keyint=100000:scenecut=0:repeat-headers=1:bframes=0"}
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, 90000)
    encoder.framerate = fps
    encoder.bit_rate = bitrate
    step = 90000 // fps
    frames = []
    band = width * 120
    for i in range(int(seconds * fps)):
        picture = draw_counter(i, width, height)
        luma = bytearray(bytes(picture.planes[0]))
        # A noisy band: something the encoder must spend its bitrate on, like screen motion.
        luma[height // 2 * width: height // 2 * width + band] = os.urandom(band)
        picture.planes[0].update(bytes(luma))
        picture.pts = i * step
        picture.time_base = encoder.time_base
        if i % (4 * fps) == 0:   # the recorder asks for a keyframe every segment (4 s)
            picture.pict_type = av.video.frame.PictureType.I
        for packet in encoder.encode(picture):
            frames.append(MediaFrame("video", codec, bytes(packet), packet.pts, 90000, packet.is_keyframe,
                                     packet.pts / 90000))
    return frames


class Reencoder:
    """H.264 decode + libx264 ultrafast encode: the transcoding recorder's extra work."""

    def __init__(self) -> None:
        self.decoder = av.CodecContext.create("h264", "r")
        self.encoder = None

    def convert(self, frame: MediaFrame) -> list[MediaFrame]:
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = frame.timestamp
        packet.time_base = Fraction(1, 90000)
        out = []
        for picture in self.decoder.decode(packet):
            if self.encoder is None:
                self.encoder = av.CodecContext.create("libx264", "w")
                self.encoder.width, self.encoder.height = picture.width, picture.height
                self.encoder.pix_fmt = "yuv420p"
                self.encoder.time_base = Fraction(1, 90000)
                self.encoder.options = {"profile": "baseline", "preset": "ultrafast", "tune": "zerolatency",
                                        "x264-params": "keyint=infinite:repeat-headers=1:bframes=0"}
            picture.pts = frame.timestamp
            picture.time_base = Fraction(1, 90000)
            picture.pict_type = (av.video.frame.PictureType.I if frame.keyframe
                                 else av.video.frame.PictureType.NONE)
            for encoded in self.encoder.encode(picture):
                out.append(MediaFrame("video", "H264", bytes(encoded), encoded.pts, 90000, encoded.is_keyframe,
                                      frame.arrival))
        return out


def mix(video: list[MediaFrame], seconds: float) -> list[MediaFrame]:
    audio = SyntheticSession(seconds, video=False, audio_start=0.0, arrival0=0.0, jitter=0.0).frames
    return sorted(video + audio, key=lambda f: f.arrival)


async def run_cpu(pool, args, tmp: Path) -> None:
    seconds = args.seconds
    print(f"encoding {seconds:.0f} s of 720p30 input (H.264 and VP8) ...", flush=True)
    h264 = mix(encode_720p(seconds, "H264"), seconds)
    vp8 = mix(encode_720p(seconds, "VP8"), seconds)
    video_bytes = sum(len(f.data) for f in h264 if f.kind == "video")
    print(f"input: {video_bytes * 8 / seconds / 1e6:.2f} Mbit/s H.264, "
          f"{sum(1 for f in h264 if f.kind == 'video')} video frames, "
          f"{sum(1 for f in h264 if f.kind == 'audio')} Opus packets")
    room = await directory.create(pool, f"bench-{uuid.uuid4().hex[:8]}", title="bench")
    recorder = Recorder(pool, LocalStorage(tmp / "episodes"), node="bench", segment_seconds=4.0,
                        reconnect_grace=0)
    rows = []
    base_cpu, base_wall, _ = await feed_realtime(None, room, h264)
    rows.append(("feed only", base_cpu, base_wall))
    cpu, wall, remux = await feed_realtime(recorder, room, h264)
    rows.append(("remux (shipped)", cpu, wall))
    recorder.audio_codec = "aac"
    cpu, wall, _ = await feed_realtime(recorder, room, h264)
    rows.append(("remux + AAC audio (recording.audio_codec=aac)", cpu, wall))
    recorder.audio_codec = "opus"
    reencoder = Reencoder()
    cpu, wall, _ = await feed_realtime(recorder, room, h264, transform=reencoder.convert)
    rows.append(("transcode H.264", cpu, wall))
    cpu, wall, _ = await feed_realtime(recorder, room, vp8)
    rows.append(("vp8 input (shipped)", cpu, wall))

    base = base_cpu / base_wall
    print()
    print("| mode | CPU s | wall s | % of one core | minus feed loop |")
    print("|---|---|---|---|---|")
    for name, cpu, wall in rows:
        share = cpu / wall
        print(f"| {name} | {cpu:.2f} | {wall:.1f} | {share * 100:.2f}% | {(share - base) * 100:.2f}% |")

    delays = [(listed - segment.closed_at) * 1000 for segment, listed in remux.listed]
    print()
    print(f"segment close -> listed (remux run, {len(delays)} segments): "
          f"p50 {statistics.median(delays):.1f} ms, p99 {pct(delays, 99):.1f} ms, max {max(delays):.1f} ms")
    episode = await episodes.get(pool, remux.episode_id)
    print(f"remux episode: {episode.segment_count} segments, {episode.duration:.2f} s, status {episode.status}")


async def run_sources(pool, args, tmp: Path) -> None:
    seconds = args.sources_seconds
    print(f"\nencoding {seconds:.0f} s of screen 1080p30 + camera 720p30 + Opus ...", flush=True)
    screen = encode_video(seconds, "H264", 1920, 1080, 30, 3_000_000)
    camera = encode_720p(seconds, "H264")
    audio = SyntheticSession(seconds, video=False, audio_start=0.0, arrival0=0.0, jitter=0.0).frames
    for name, frames in (("screen", screen), ("camera", camera)):
        print(f"input {name}: {sum(len(f.data) for f in frames) * 8 / seconds / 1e6:.2f} Mbit/s, {len(frames)} frames")
    tagged_single = sorted([("camera", f) for f in camera] + [("microphone", f) for f in audio],
                           key=lambda p: p[1].arrival)
    tagged_multi = sorted([("screen", f) for f in screen] + [("camera", f) for f in camera]
                          + [("microphone", f) for f in audio], key=lambda p: p[1].arrival)
    room = await directory.create(pool, f"bench-{uuid.uuid4().hex[:8]}", title="sources")
    recorder = Recorder(pool, LocalStorage(tmp / "sources"), node="bench", segment_seconds=4.0, reconnect_grace=0)
    results: dict[str, list[tuple[float, float]]] = {"feed only": [], "camera only": [], "screen+camera": []}
    for _ in range(args.rounds):
        for name, tagged, rec in (("feed only", tagged_multi, None), ("camera only", tagged_single, recorder),
                                  ("screen+camera", tagged_multi, recorder)):
            load0 = os.getloadavg()[0]
            cpu, wall, recording = await feed_realtime(rec, room, [f for _, f in tagged], sources=[s for s, _ in tagged])
            if recording is not None:
                assert recording.status == "ready", recording.status
                assert len(recording.renditions) == (2 if name == "screen+camera" else 1)
            results[name].append((cpu / wall, (load0 + os.getloadavg()[0]) / 2))
    base = statistics.median(share for share, _ in results["feed only"])
    print("| session | % of one core (median) | minus feed loop | per recorded video source | load avg per round |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        share = statistics.median(s for s, _ in runs)
        videos = {"feed only": 0, "camera only": 1, "screen+camera": 2}[name]
        per = f"{(share - base) * 100 / videos:.2f}%" if videos else "-"
        loads = ", ".join(f"{load:.1f}" for _, load in runs)
        print(f"| {name} | {share * 100:.2f}% | {(share - base) * 100:.2f}% | {per} | {loads} |")


async def run_sync(pool, args, tmp: Path) -> None:
    seconds = args.sync_minutes * 60
    print(f"\nencoding a {args.sync_minutes:g}-minute 320x180 session ...", flush=True)
    t0 = time.perf_counter()
    session = SyntheticSession(seconds, gop_seconds=4.0, audio_start=0.3, jitter=0.01)
    print(f"  ({time.perf_counter() - t0:.0f} s to encode)", flush=True)
    room = await directory.create(pool, f"bench-{uuid.uuid4().hex[:8]}", title="sync")
    storage = LocalStorage(tmp / "sync")
    recorder = Recorder(pool, storage, node="bench", segment_seconds=4.0, reconnect_grace=0, queue_size=100000)
    recording = recorder.recording_for(room.id, room.slug)
    sinks = {"video": recording.add_track("video"), "audio": recording.add_track("audio")}
    for i, frame in enumerate(session.frames):
        sinks[frame.kind].on_frame(frame)
        if i % 500 == 0:
            await asyncio.sleep(0)
    for sink in sinks.values():
        sink.on_end()
    await asyncio.wait_for(recording.done.wait(), 600)
    rows = await episodes.segments(pool, recording.episode_id)
    video: dict[int, float] = {}
    onsets: list[float] = []
    counters: list[int] = []
    for row in rows:
        init = storage.read(f"{recording.storage_key}/{row.init_name}")
        decoded = read_segment(init, storage.read(f"{recording.storage_key}/{row.name}"))
        for pts, counter in decoded.video:
            video[counter] = pts
            counters.append(counter)
        onsets += decoded.audio_onsets
    offsets = [o - video[round(o) * 30] for o in onsets if round(o) * 30 in video]
    gaps = sum(1 for a, b in zip(counters, counters[1:]) if b != a + 1)
    durations = [r.duration for r in rows]
    print("| minutes | segments | frames | counter gaps | beeps matched | A/V offset min / median / max (ms) |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.sync_minutes:g} | {len(rows)} | {len(counters)} | {gaps} | {len(offsets)} | "
          f"{min(offsets) * 1000:.1f} / {statistics.median(offsets) * 1000:.1f} / {max(offsets) * 1000:.1f} |")
    print(f"segment durations: min {min(durations):.3f} s, max {max(durations):.3f} s")


async def main(args) -> None:
    name = f"ods_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    try:
        await migrate(dsn)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                if args.seconds > 0:
                    await run_cpu(pool, args, Path(tmp))
                if args.sources_seconds > 0:
                    await run_sources(pool, args, Path(tmp))
                if args.sync_minutes > 0:
                    await run_sync(pool, args, Path(tmp))
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the 720p session (0 skips part 1)")
    parser.add_argument("--sources-seconds", type=float, default=20.0,
                        help="length of the screen+camera session (0 skips part 1b)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of part 1b (modes alternate within each)")
    parser.add_argument("--sync-minutes", type=float, default=10.0, help="length of the sync run (0 skips it)")
    asyncio.run(main(parser.parse_args()))
