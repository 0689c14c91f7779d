"""SFU fan-out benchmark: one 720p H.264 + Opus publisher, N viewers that do not decode.

Method. A server process runs either the real application (``sfu`` mode:
make_app with WHIP/WHEP, recording off, a fresh migrated database) or
aiortc's classic decode-and-re-encode relay (``relay`` mode: the publisher's
tracks decoded once, ``MediaRelay`` hands the frames to one encoder per
viewer), with the same WHIP/WHEP-style HTTP signaling. The load is a
publisher process sending a pre-encoded clip (1280x720, 30 fps, ~1.5 Mbit/s
x264 baseline, keyframe every second, plus 20 ms Opus packets) through
aiortc's ``pack()`` path, so the publisher encodes nothing while measuring,
and N viewers whose receivers are tapped (``odsmedia.media.receiver``), so
they depacketize but never decode. For each N: connect, warm up, then over
the measured window read the server process's CPU time (psutil) and the
RTP packets its senders sent; CPU per viewer = (CPU at N - CPU with the
publisher alone) / N. Latency (sfu mode only; the relay's output bytes
differ from its input) is measured two ways: *server* = from the moment a
frame leaves the receiver hook to the moment each viewer's sender packs it
(inside the server process); *end-to-end* = from the publisher handing a
frame to its sender to a viewer's receiver completing it, matched by the
frame's bytes (both processes read CLOCK_MONOTONIC). Frames are reassembled
at their last packet (``EagerJitterBuffer``) at the server and the viewers.
Everything runs on 127.0.0.1; every phase has a deadline.

    .venv/bin/python bench/sfu_fanout.py [--viewers 1,10,25,50] [--relay-viewers 1,4] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import av  # noqa: E402
import psutil  # noqa: E402
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402
from aiortc.rtcrtpsender import RTCRtpSender  # noqa: E402

from odsmedia.media import ice  # noqa: E402
from odsmedia.media.receiver import tap  # noqa: E402

ADMIN_DSN = os.environ.get("ODS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ODS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
FPS = 30
CLIP_SECONDS = 3
SENT_ATTR = "_RTCRtpSender__packet_count"


def frame_key(data: bytes) -> bytes:
    # aiortc's depacketizer writes 4-byte start codes; x264 writes some 3-byte ones.
    return hashlib.blake2b(data.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01"), digest_size=8).digest()


# --- the clip ---------------------------------------------------------------------------------

def make_clip(width: int = 1280, height: int = 720, bitrate: int = 1_500_000) -> tuple[list[bytes], list[bytes]]:
    """Annex B H.264 access units (keyframe every second) and 20 ms Opus packets."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, FPS)
    ctx.framerate = fractions.Fraction(FPS, 1)
    ctx.bit_rate = bitrate
    ctx.options = {"preset": "veryfast", "tune": "zerolatency", "profile": "baseline",
                   "x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0:vbv-maxrate={bitrate // 1000}:"
                                  f"vbv-bufsize={bitrate // 1000}"}
    rng = os.urandom
    video: list[bytes] = []
    y_size = width * height
    base = bytes((x * 7) & 0xFF for x in range(width)) * height
    for i in range(FPS * CLIP_SECONDS):
        frame = av.VideoFrame(width, height, "yuv420p")
        # A moving gradient plus a noisy band: enough detail for the encoder to use its bitrate.
        shift = (i * 8) % width
        y = bytearray(base[shift:] + base[:shift])
        band = (i * 11) % (height - 160)
        y[band * width:(band + 160) * width] = rng(160 * width)
        frame.planes[0].update(bytes(y[:y_size]))
        for plane in frame.planes[1:]:
            plane.update(bytes([128 + (i % 32)]) * plane.buffer_size)
        frame.pts = i
        video += [bytes(p) for p in ctx.encode(frame)]
    video += [bytes(p) for p in ctx.encode(None)]

    actx = av.CodecContext.create("libopus", "w")
    actx.sample_rate, actx.layout, actx.format = 48000, "stereo", "s16"
    actx.bit_rate = 64000
    audio: list[bytes] = []
    for i in range(50 * CLIP_SECONDS):
        samples = bytearray()
        for n in range(960):
            v = int(8000 * math.sin(2 * math.pi * 440 * (i * 960 + n) / 48000))
            samples += v.to_bytes(2, "little", signed=True) * 2
        frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
        frame.sample_rate = 48000
        frame.planes[0].update(bytes(samples))
        frame.pts = i * 960
        audio += [bytes(p) for p in actx.encode(frame)]
    return video, audio


class ClipTrack(MediaStreamTrack):
    """Loops pre-encoded packets in real time; returns av.Packet so aiortc only packs."""

    def __init__(self, kind: str, packets: list[bytes], interval: float, step: int, clock: int,
                 sent: dict[bytes, list[float]] | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.packets = packets
        self.interval = interval
        self.step = step
        self.time_base = fractions.Fraction(1, clock)
        self.index = 0
        self.start: float | None = None
        self.sent = sent

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self.start is None:
            self.start = now
        else:
            wait = self.start + self.index * self.interval - now
            if wait > 0:
                await asyncio.sleep(wait)
        data = self.packets[self.index % len(self.packets)]
        packet = av.Packet(data)
        packet.pts = packet.dts = self.index * self.step
        packet.time_base = self.time_base
        self.index += 1
        if self.sent is not None:
            self.sent.setdefault(frame_key(data), []).append(time.monotonic())
        return packet


# --- server processes -------------------------------------------------------------------------

async def serve_sfu(database_url: str, prefix: str, aiortc_loop: bool = False) -> None:
    from aiohttp import web

    if aiortc_loop:
        # A/B: aiortc's own RTP loop instead of the lean one (bench only).
        import odsmedia.rooms.transport as transport_mod

        transport_mod.install_lean_loop = lambda sender: None

    import odsmedia.media.sender as sender_mod
    from odsmedia.app import make_app
    from odsmedia.auth import tokens
    from odsmedia.config import load
    from odsmedia.keys import DB
    from odsmedia.rooms.sfu import SFU
    from odsmedia.rooms import directory

    latencies: list[float] = []
    real_pack = sender_mod.Packer.pack

    def timed_pack(self, frame):  # bench instrumentation only: time from receiver hook to pack
        if frame.kind == "video":
            latencies.append(time.monotonic() - frame.arrival)
        return real_pack(self, frame)

    sender_mod.Packer.pack = timed_pack
    config = load(environ={"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "ODS_REDIS_PREFIX": prefix,
                           "ODS_ICE_ADDRESSES": "127.0.0.1", "ODS_HTTP_PORT": "0", "ODS_RECORDING_ENABLED": "false",
                           "ODS_DATA_DIR": f"/tmp/ods-bench-{prefix.strip(':')}", "ODS_LOG_LEVEL": "warning",
                           "ODS_SECRET_KEY": "bench-secret-key-0123456789-abcdefghijklmnop"})
    app = make_app(config)

    async def stats(request: web.Request) -> web.Response:
        sfu = request.app[SFU]
        sent = 0
        for room in sfu.rooms.values():
            for participant in room.participants.values():
                for transport in participant.transports.values():
                    for t in transport.pc.getTransceivers():
                        sent += getattr(t.sender, SENT_ATTR, 0)
        samples = list(latencies)
        latencies.clear()
        return web.json_response({"packets_sent": sent, "latency": samples})

    app.router.add_get("/bench/stats", stats)
    profile_to = os.environ.get("ODS_BENCH_PROFILE")
    if profile_to:
        # Where the server's time goes: a cProfile dump written when the bench stops it.
        import cProfile
        import signal

        profiler = cProfile.Profile()
        profiler.enable()

        def dump(*_):
            profiler.disable()
            profiler.dump_stats(profile_to)
            os._exit(0)

        signal.signal(signal.SIGTERM, dump)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    slug = "bench-" + uuid.uuid4().hex[:8]
    record = await directory.create(app[DB], slug, title="bench")
    token, _ = await tokens.mint(app[DB], room_id=record.id, role="host", ttl_seconds=3600)
    print(json.dumps({"port": port, "whip": f"/rooms/{slug}/whip", "whep": f"/rooms/{slug}/whep",
                      "token": token}), flush=True)
    await asyncio.Event().wait()


async def serve_relay() -> None:
    from aiohttp import web
    from aiortc.contrib.media import MediaRelay

    ice.configure(["127.0.0.1"])
    relay = MediaRelay()
    tracks: dict[str, MediaStreamTrack] = {}
    pcs: set[RTCPeerConnection] = set()

    async def negotiate(pc: RTCPeerConnection, offer: str) -> web.Response:
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        location = f"/session/{id(pc)}"
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": location})

    async def publish(request: web.Request) -> web.Response:
        pc = RTCPeerConnection(ice.rtc_configuration())
        pcs.add(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            tracks[track.kind] = track

        return await negotiate(pc, await request.text())

    async def play(request: web.Request) -> web.Response:
        pc = RTCPeerConnection(ice.rtc_configuration())
        pcs.add(pc)
        for kind in ("video", "audio"):
            if kind in tracks:
                pc.addTrack(relay.subscribe(tracks[kind], buffered=False))
        return await negotiate(pc, await request.text())

    async def delete(request: web.Request) -> web.Response:
        for pc in list(pcs):
            if f"/session/{id(pc)}" == request.path:
                pcs.discard(pc)
                await pc.close()
        if not pcs:
            tracks.clear()
        return web.Response(status=200)

    async def stats(request: web.Request) -> web.Response:
        sent = sum(getattr(t.sender, SENT_ATTR, 0) for pc in pcs for t in pc.getTransceivers())
        return web.json_response({"packets_sent": sent, "latency": []})

    app = web.Application()
    app.router.add_post("/whip", publish)
    app.router.add_post("/whep", play)
    app.router.add_delete("/session/{id}", delete)
    app.router.add_get("/bench/stats", stats)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port, "whip": "/whip", "whep": "/whep", "token": ""}), flush=True)
    await asyncio.Event().wait()


# --- load -------------------------------------------------------------------------------------

def prefer_h264(transceiver) -> None:
    caps = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in caps if c.mimeType == "video/H264"
                                     and c.parameters.get("profile-level-id") == "42e01f"]
                                    + [c for c in caps if c.name == "rtx"])


class Load:
    def __init__(self, base: str, info: dict, video: list[bytes], audio: list[bytes]) -> None:
        self.base = base
        self.info = info
        self.video = video
        self.audio = audio
        self.arrivals: list[tuple[bytes, float]] = []
        self.measuring = False
        self.sessions: list[tuple[RTCPeerConnection, str]] = []
        self.http = aiohttp.ClientSession()

    async def _post(self, path: str, sdp: str, auth: bool) -> tuple[str, str]:
        headers = {"Content-Type": "application/sdp"}
        if auth and self.info["token"]:
            headers["Authorization"] = f"Bearer {self.info['token']}"
        async with self.http.post(self.base + path, data=sdp, headers=headers,
                                  timeout=aiohttp.ClientTimeout(total=20)) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"{path}: {resp.status} {body[:200]}")
            return body, resp.headers["Location"]

    async def publish(self, sent: dict[bytes, list[float]] | None = None) -> None:
        pc = RTCPeerConnection(ice.rtc_configuration())
        video = ClipTrack("video", self.video, 1 / FPS, 90000 // FPS, 90000, sent)
        prefer_h264(pc.addTransceiver(video, direction="sendonly"))
        pc.addTransceiver(ClipTrack("audio", self.audio, 0.02, 960, 48000), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        answer, location = await self._post(self.info["whip"], pc.localDescription.sdp, True)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        self.sessions.append((pc, location))
        await self._connected(pc)

    async def view(self) -> None:
        pc = RTCPeerConnection(ice.rtc_configuration())
        video = pc.addTransceiver("video", direction="recvonly")
        prefer_h264(video)
        audio = pc.addTransceiver("audio", direction="recvonly")

        def on_video(frame) -> None:
            if self.measuring:
                self.arrivals.append((frame_key(frame.data), frame.arrival))

        tap(video.receiver, on_video, lambda: None, kind="video")
        tap(audio.receiver, lambda frame: None, lambda: None, kind="audio")
        await pc.setLocalDescription(await pc.createOffer())
        answer, location = await self._post(self.info["whep"], pc.localDescription.sdp, False)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        self.sessions.append((pc, location))
        await self._connected(pc)

    async def _connected(self, pc: RTCPeerConnection) -> None:
        deadline = time.monotonic() + 20
        while pc.connectionState != "connected":
            if time.monotonic() > deadline or pc.connectionState == "failed":
                raise RuntimeError("peer did not connect")
            await asyncio.sleep(0.05)

    async def stats(self) -> dict:
        async with self.http.get(self.base + "/bench/stats") as resp:
            return await resp.json()

    async def close(self) -> None:
        for pc, location in reversed(self.sessions):
            headers = {"Authorization": f"Bearer {self.info['token']}"} if self.info["token"] else {}
            try:
                async with self.http.delete(self.base + location, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=5)):
                    pass
            except Exception:
                pass
            await pc.close()
        self.sessions.clear()
        await self.http.close()


def pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def latencies(arrivals: list[tuple[bytes, float]], sent: dict[bytes, list[float]]) -> list[float]:
    """Arrival minus the latest send of the same frame bytes before it (the clip loops every 3 s)."""
    out = []
    for key, arrival in arrivals:
        earlier = [t for t in sent.get(key, ()) if t <= arrival]
        if earlier:
            out.append(arrival - earlier[-1])
    return out


async def publisher_main(info_path: str, clip_path: str, log_path: str) -> None:
    """The publisher in its own process, so viewers' receive work cannot delay what it sends."""
    import pickle
    import signal

    ice.configure(["127.0.0.1"])
    info = json.loads(Path(info_path).read_text())
    video, audio = pickle.loads(Path(clip_path).read_bytes())
    load = Load(info["base"], info, video, audio)
    sent: dict[bytes, list[float]] = {}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await load.publish(sent)
    print("ready", flush=True)
    await stop.wait()
    Path(log_path).write_text(json.dumps({k.hex(): v for k, v in sent.items()}))
    await load.close()


async def measure(mode: str, info: dict, viewers: int, args, clip_path: str, tmp: Path) -> dict:
    server = psutil.Process(info["pid"])
    base = f"http://127.0.0.1:{info['port']}"
    info_path, log_path = tmp / "info.json", tmp / f"sent-{mode}-{viewers}.json"
    info_path.write_text(json.dumps({**info, "base": base}))
    publisher = subprocess.Popen([sys.executable, __file__, "--publisher", str(info_path), clip_path, str(log_path)],
                                 stdout=subprocess.PIPE, cwd=REPO, text=True)
    load = Load(base, info, [], [])
    try:
        assert publisher.stdout is not None
        if publisher.stdout.readline().strip() != "ready":
            raise RuntimeError("publisher did not start")
        # Viewers join a few at a time so the handshakes do not starve the running streams.
        for start in range(0, viewers, 5):
            await asyncio.gather(*(load.view() for _ in range(min(5, viewers - start))))
        await asyncio.sleep(args.warmup)
        await load.stats()                      # drop warm-up latency samples
        procs = [server, psutil.Process(publisher.pid)]
        before_cpu = sum(server.cpu_times()[:2])
        before = (await load.stats())["packets_sent"]
        load_before = sum(psutil.Process().cpu_times()[:2]) + sum(procs[1].cpu_times()[:2])
        load.measuring = True
        started = time.monotonic()
        await asyncio.sleep(args.seconds)
        elapsed = time.monotonic() - started
        load.measuring = False
        after_stats = await load.stats()
        cpu = (sum(server.cpu_times()[:2]) - before_cpu) / elapsed
        mine = (sum(psutil.Process().cpu_times()[:2]) + sum(procs[1].cpu_times()[:2]) - load_before) / elapsed
    finally:
        publisher.terminate()
        try:
            publisher.wait(15)
        except subprocess.TimeoutExpired:
            publisher.kill()
        await load.close()
        await asyncio.sleep(0.5)
    sent = {bytes.fromhex(k): v for k, v in json.loads(log_path.read_text()).items()} if log_path.exists() else {}
    e2e = latencies(load.arrivals, sent)
    return {"mode": mode, "viewers": viewers, "cpu": cpu, "load_cpu": mine,
            "pps": (after_stats["packets_sent"] - before) / elapsed,
            "server_p50": pct(after_stats["latency"], 0.5), "server_p99": pct(after_stats["latency"], 0.99),
            "e2e_p50": pct(e2e, 0.5), "e2e_p99": pct(e2e, 0.99)}


def start_server(mode: str, database_url: str, prefix: str) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, __file__, "--serve", mode, "--database-url", database_url, "--prefix", prefix]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=REPO, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError(f"{mode} server did not start")
    info = json.loads(line)
    info["pid"] = proc.pid
    return proc, info


async def run(args) -> None:
    import asyncpg

    from odsmedia.storage import migrate

    import pickle
    import tempfile

    ice.configure(["127.0.0.1"])
    print("encoding the clip ...", file=sys.stderr)
    clip = make_clip()
    tmp = Path(tempfile.mkdtemp(prefix="ods-sfu-bench-"))
    clip_path = tmp / "clip.pickle"
    clip_path.write_bytes(pickle.dumps(clip))
    kbps = sum(len(p) for p in clip[0]) * 8 / CLIP_SECONDS / 1000
    print(f"clip: {len(clip[0])} video frames, {kbps:.0f} kbit/s video", file=sys.stderr)
    dbname = f"ods_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{dbname}"')
    database_url = ADMIN_DSN.rsplit("/", 1)[0] + "/" + dbname
    rows = []
    try:
        await migrate(database_url)
        modes = [("sfu", args.viewers), ("relay", args.relay_viewers)]
        if args.compare_senders:
            modes.insert(1, ("sfu-aiortc-loop", args.viewers))
        for mode, counts in modes:
            if not counts:
                continue
            proc, info = start_server(mode, database_url, f"odsbench:{uuid.uuid4().hex[:6]}:")
            try:
                for n in [0, *counts]:
                    print(f"{mode}: {n} viewers ...", file=sys.stderr)
                    rows.append(await asyncio.wait_for(measure(mode, info, n, args, str(clip_path), tmp),
                                                       args.seconds + args.warmup + 120))
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await admin.close()
        shutil.rmtree(tmp, ignore_errors=True)
    report(rows, kbps)


def report(rows: list[dict], kbps: float) -> None:
    base = {r["mode"]: r["cpu"] for r in rows if r["viewers"] == 0}
    print(f"\nclip video bitrate: {kbps:.0f} kbit/s, 1280x720 {FPS} fps H.264 baseline + Opus\n")
    print("| mode | viewers | server CPU (cores) | CPU per viewer (% of a core) | egress packets/s | "
          "server CPU per egress packet (us) | server latency p50/p99 (ms) | end-to-end p50/p99 (ms) | "
          "load-generator CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    per_viewer: dict[str, list[float]] = {}
    for r in rows:
        pv = (r["cpu"] - base[r["mode"]]) / r["viewers"] * 100 if r["viewers"] else float("nan")
        if r["viewers"]:
            per_viewer.setdefault(r["mode"], []).append(pv)
        sfu_mode = r["mode"].startswith("sfu") and r["viewers"]
        lat = f"{r['server_p50']:.2f} / {r['server_p99']:.2f}" if sfu_mode else "-"
        e2e = f"{r['e2e_p50']:.1f} / {r['e2e_p99']:.1f}" if sfu_mode else "-"
        # Robust to a starved machine: extra CPU over extra packets actually sent.
        per_packet = (r["cpu"] - base[r["mode"]]) / r["pps"] * 1e6 if r["pps"] else float("nan")
        print(f"| {r['mode']} | {r['viewers']} | {r['cpu']:.2f} | {pv:.2f} | {r['pps']:.0f} | {per_packet:.0f} | "
              f"{lat} | {e2e} | {r['load_cpu']:.2f} |")
    if per_viewer.get("sfu") and per_viewer.get("relay"):
        sfu = statistics.median(per_viewer["sfu"])
        relay = statistics.median(per_viewer["relay"])
        print(f"\nmedian CPU per viewer: sfu {sfu:.2f}% of a core, relay {relay:.2f}%: relay/sfu = {relay / sfu:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", default="1,10,25,50", help="viewer counts for the SFU")
    parser.add_argument("--relay-viewers", default="1,4", help="viewer counts for the re-encoding relay")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window per step")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--compare-senders", action="store_true",
                        help="also run the SFU with aiortc's own RTP loop instead of the lean one")
    parser.add_argument("--serve", choices=("sfu", "sfu-aiortc-loop", "relay"), help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--publisher", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publisher:
        asyncio.run(publisher_main(*args.publisher))
    elif args.serve in ("sfu", "sfu-aiortc-loop"):
        asyncio.run(serve_sfu(args.database_url, args.prefix, aiortc_loop=args.serve == "sfu-aiortc-loop"))
    elif args.serve == "relay":
        asyncio.run(serve_relay())
    else:
        args.viewers = [int(v) for v in args.viewers.split(",") if v]
        args.relay_viewers = [int(v) for v in args.relay_viewers.split(",") if v]
        asyncio.run(asyncio.wait_for(run(args), 1800))


if __name__ == "__main__":
    main()
