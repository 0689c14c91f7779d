"""SFU fan-out benchmark: packet path vs frame path vs Janus VideoRoom vs a bare sendto floor.

One publisher sends a pre-encoded clip (1280x720 30 fps x264 constrained
baseline at ~1.5 Mbit/s, a keyframe every second, plus 20 ms Opus packets)
through aiortc's ``pack()`` path, so it never encodes; N viewers receive
it.  Servers, each a child process started once and measured in turn:

* ``packet``: ODS (``make_app``, WHIP in, WHEP out, recording off) with
  ``media.forwarding = "packet"`` (the default);
* ``frame``: the same with ``media.forwarding = "frame"``;
* ``janus`` / ``janus-el2``: Debian's Janus 1.1.2 VideoRoom, default
  config and ``event_loops = 2``, loopback only (an LD_PRELOAD shim makes
  getifaddrs() report 127.0.0.1 alone; every candidate and c= line Janus
  sends is checked, and the run stops if one is not 127.0.0.1);
* ``floor``: bench/native/sendfloor.c, one plain sendto() per packet per
  destination at the clip's packet rate and mean size (no SRTP, no
  rewrite): what the kernel charges for the sends alone.

Viewers (all in this process) are aiortc peers whose DTLS transport hands
RTP to a counter: no jitter buffer, no depacketization, SRTP undone only
for the packets sampled for latency, so one process can hold 40 of them.
The publisher runs in its own process.

Per step: publisher and N viewers connected, warm-up, then a measured
window.  Server CPU = user+system time of the server process over the
window (its kernel CPU-time clock, nanoseconds; the floor's getrusage); per viewer = (CPU at N - CPU with the publisher alone, same
round) / N; per delivered packet = that extra CPU / RTP packets the viewers
counted; fps = each viewer's completed video frames (marker bits) per
second, median and minimum over viewers; forward latency = publisher
handing a frame's last packet to its socket -> a viewer receiving it,
matched by the payload's last 16 bytes (both processes read
CLOCK_MONOTONIC), p50/p99 over all viewers.  Rounds alternate the order of
the servers; tables give medians over rounds and, because the machine is
shared, ratios computed within each round.  The 1-minute load average is
recorded with every step.  Everything runs on 127.0.0.1; every phase has a
deadline.

    .venv/bin/python bench/sfu_fanout.py [--viewers 1,5,10,20,40] [--rounds 2] [--seconds 6]
        [--modes packet,frame,janus,janus-el2,floor]
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
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

ADMIN_DSN = os.environ.get("ODS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ODS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
FPS = 30
CLIP_SECONDS = 3
JANUS_ROOM = 1234
JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
NATIVE = Path(__file__).resolve().parent / "native"


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

    def __init__(self, kind: str, packets: list[bytes], interval: float, step: int, clock: int) -> None:
        super().__init__()
        self.kind = kind
        self.packets = packets
        self.interval = interval
        self.step = step
        self.time_base = fractions.Fraction(1, clock)
        self.index = 0
        self.start: float | None = None

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
        return packet


# --- servers ----------------------------------------------------------------------------------

async def serve_ods(database_url: str, prefix: str, forwarding: str) -> None:
    from aiohttp import web

    from odsmedia.app import make_app
    from odsmedia.auth import tokens
    from odsmedia.config import load
    from odsmedia.keys import DB
    from odsmedia.rooms import directory

    config = load(environ={"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "ODS_REDIS_PREFIX": prefix,
                           "ODS_ICE_ADDRESSES": "127.0.0.1", "ODS_HTTP_PORT": "0", "ODS_RECORDING_ENABLED": "false",
                           "ODS_MEDIA_FORWARDING": forwarding,
                           "ODS_DATA_DIR": f"/tmp/ods-bench-{prefix.strip(':').replace(':', '-')}",
                           "ODS_LOG_LEVEL": "warning",
                           "ODS_SECRET_KEY": "bench-secret-key-0123456789-abcdefghijklmnop"})
    app = make_app(config)

    # Bench instrumentation: CPU time spent inside the packet fan-out loop (thread CPU
    # clock around PacketFanout.on_packet: two clock reads per incoming packet, not per viewer).
    from odsmedia.media.forwarder import PacketFanout

    # Also the wall time of one incoming packet's fan-out (its last viewer's copy leaves
    # at the end): the server's share of the forward latency after aiortc's receive path.
    loop_cpu = [0.0]
    spans: list[float] = []
    on_packet = PacketFanout.on_packet

    def timed_on_packet(self, *args):
        started, wall = time.thread_time(), time.perf_counter()
        on_packet(self, *args)
        loop_cpu[0] += time.thread_time() - started
        if len(spans) < 100_000:
            spans.append(time.perf_counter() - wall)

    PacketFanout.on_packet = timed_on_packet

    # And the garbage collector's pauses (a stall there delays every packet behind it).
    import gc

    gc_pauses: list[float] = []
    gc_started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        elif len(gc_pauses) < 100_000:
            gc_pauses.append(time.perf_counter() - gc_started[0])

    gc.callbacks.append(on_gc)

    async def bench_stats(request: web.Request) -> web.Response:
        samples = sorted(spans)
        spans.clear()
        pauses = list(gc_pauses)
        gc_pauses.clear()
        return web.json_response({"fanout_cpu": loop_cpu[0], "spans": [
            samples[int(q * (len(samples) - 1))] if samples else None for q in (0.5, 0.99)],
            "gc": [len(pauses), max(pauses, default=0.0), sum(pauses)]})

    app.router.add_get("/bench/stats", bench_stats)
    profile_to = os.environ.get("ODS_BENCH_PROFILE")
    if profile_to:
        # Where the server's time goes: a cProfile dump written when the bench stops it.
        import cProfile
        import signal

        # On the CPU clock: a wall-clock profile charges a sendto() or clock read with the
        # time the server sat preempted after it (each loopback send wakes the viewers).
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()

        def dump(*_):
            profiler.disable()
            profiler.dump_stats(f"{profile_to}.{forwarding}")
            os._exit(0)

        signal.signal(signal.SIGTERM, dump)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    slug = "bench-" + uuid.uuid4().hex[:8]
    record = await directory.create(app[DB], slug, title="bench")
    token, _ = await tokens.mint(app[DB], room_id=record.id, role="host", ttl_seconds=7200)
    print(json.dumps({"kind": "ods", "base": f"http://127.0.0.1:{port}", "whip": f"/rooms/{slug}/whip",
                      "whep": f"/rooms/{slug}/whep", "token": token}), flush=True)
    await asyncio.Event().wait()


def build_native(tmp: Path) -> dict[str, Path]:
    """Compile the floor sender and the Janus loopback shim with cc (absent: those modes are skipped)."""
    out = {}
    cc = shutil.which("cc")
    if cc is None:
        print("no C compiler: the floor and Janus modes are skipped", file=sys.stderr)
        return out
    for name, extra in (("sendfloor", []), ("lo_only.so", ["-shared", "-fPIC"])):
        target = tmp / name
        source = NATIVE / (name.split(".")[0] + ".c")
        subprocess.run([cc, "-O2", *extra, "-o", str(target), str(source)], check=True)
        out[name] = target
    return out


def janus_config(folder: Path, port: int, event_loops: int | None) -> None:
    """A minimal loopback-only Janus: the VideoRoom plugin and the HTTP transport, nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    plugins = sorted({p.name.split(".so")[0] + ".so" for p in (JANUS_LIB / "plugins").glob("*.so")}
                     - {"libjanus_videoroom.so"})
    transports = sorted({p.name.split(".so")[0] + ".so" for p in (JANUS_LIB / "transports").glob("*.so")}
                        - {"libjanus_http.so"})
    events = sorted({p.name.split(".so")[0] + ".so" for p in (JANUS_LIB / "events").glob("*.so")})
    loggers = sorted({p.name.split(".so")[0] + ".so" for p in (JANUS_LIB / "loggers").glob("*.so")})
    loops = f"\tevent_loops = {event_loops}\n" if event_loops else ""
    (folder / "janus.jcfg").write_text(
        "general: {\n"
        f"\tconfigs_folder = \"{folder}\"\n\tplugins_folder = \"{JANUS_LIB / 'plugins'}\"\n"
        f"\ttransports_folder = \"{JANUS_LIB / 'transports'}\"\n\tevents_folder = \"{JANUS_LIB / 'events'}\"\n"
        f"\tloggers_folder = \"{JANUS_LIB / 'loggers'}\"\n\tdebug_level = 2\n\tsession_timeout = 600\n"
        f"\tinterface = \"127.0.0.1\"\n{loops}"
        "}\nmedia: {\n\tipv6 = false\n}\n"
        "nat: {\n\tnice_debug = false\n\tignore_mdns = true\n}\n"
        f"plugins: {{\n\tdisable = \"{','.join(plugins)}\"\n}}\n"
        f"transports: {{\n\tdisable = \"{','.join(transports)}\"\n}}\n"
        f"events: {{\n\tbroadcast = false\n\tdisable = \"{','.join(events)}\"\n}}\n"
        f"loggers: {{\n\tdisable = \"{','.join(loggers)}\"\n}}\n")
    (folder / "janus.transport.http.jcfg").write_text(
        "general: {\n\tjson = \"compact\"\n\tbase_path = \"/janus\"\n\thttp = true\n"
        f"\tport = {port}\n\tip = \"127.0.0.1\"\n\thttps = false\n}}\n"
        "admin: {\n\tadmin_http = false\n\tadmin_https = false\n}\n")
    (folder / "janus.plugin.videoroom.jcfg").write_text(
        "general: {\n}\n"
        f"room-{JANUS_ROOM}: {{\n\tdescription = \"bench\"\n\tpublishers = 1\n\tbitrate = 3000000\n"
        "\tfir_freq = 0\n\taudiocodec = \"opus\"\n\tvideocodec = \"h264\"\n\th264_profile = \"42e01f\"\n}\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_janus(tmp: Path, shim: Path, event_loops: int | None) -> tuple[subprocess.Popen, dict]:
    port = free_port()
    folder = tmp / f"janus-{event_loops or 'default'}"
    janus_config(folder, port, event_loops)
    log = open(folder / "janus.log", "w")
    env = {**os.environ, "LD_PRELOAD": str(shim)}
    proc = subprocess.Popen(["janus", "-C", str(folder / "janus.jcfg"), "-F", str(folder)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(base + "/janus/info", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"janus did not start; see {folder / 'janus.log'}")
        time.sleep(0.2)
    return proc, {"kind": "janus", "base": base, "pid": proc.pid}


def start_ods(forwarding: str, database_url: str) -> tuple[subprocess.Popen, dict]:
    prefix = f"odsbench:{uuid.uuid4().hex[:6]}:"
    cmd = [sys.executable, __file__, "--serve", forwarding, "--database-url", database_url, "--prefix", prefix]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=REPO, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError(f"{forwarding} server did not start")
    info = json.loads(line)
    info["pid"] = proc.pid
    return proc, info


# --- signaling: WHIP/WHEP (ODS) and the VideoRoom HTTP API (Janus) ------------------------------

def check_loopback(text: str) -> None:
    """Abort when a peer's SDP names any address but 127.0.0.1 (the network rule)."""
    for line in text.splitlines():
        if line.startswith("a=candidate:"):
            address = line.split()[4]
        elif line.startswith("c=IN "):
            address = line.split()[2]
        else:
            continue
        if address not in ("127.0.0.1", "0.0.0.0"):
            raise RuntimeError(f"non-loopback address in SDP: {line}")


class Janus:
    """One Janus session over the HTTP API: long-poll events per handle, keepalives."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession()
        self.session = 0
        self.queues: dict[int, asyncio.Queue] = {}
        self.tasks: list[asyncio.Task] = []

    async def post(self, path: str, body: dict) -> dict:
        body = {**body, "transaction": uuid.uuid4().hex[:12]}
        async with self.http.post(self.base + path, json=body, timeout=aiohttp.ClientTimeout(total=20)) as resp:
            reply = await resp.json(content_type=None)
        if reply.get("janus") == "error":
            raise RuntimeError(f"janus {path} {body.get('janus')}: {reply['error']}")
        return reply

    async def start(self) -> None:
        self.session = (await self.post("/janus", {"janus": "create"}))["data"]["id"]
        self.tasks = [asyncio.ensure_future(self._poll()), asyncio.ensure_future(self._keepalive())]

    async def attach(self) -> int:
        handle = (await self.post(f"/janus/{self.session}", {"janus": "attach",
                                                              "plugin": "janus.plugin.videoroom"}))["data"]["id"]
        self.queues[handle] = asyncio.Queue()
        return handle

    async def message(self, handle: int, body: dict, jsep: dict | None = None) -> dict:
        message = {"janus": "message", "body": body}
        if jsep is not None:
            message["jsep"] = jsep
        return await self.post(f"/janus/{self.session}/{handle}", message)

    async def event(self, handle: int, with_jsep: bool = True, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            event = await asyncio.wait_for(self.queues[handle].get(), max(0.01, deadline - time.monotonic()))
            if event.get("janus") == "event" and (event.get("jsep") or not with_jsep):
                return event

    async def _poll(self) -> None:
        while True:
            try:
                async with self.http.get(f"{self.base}/janus/{self.session}?maxev=20",
                                         timeout=aiohttp.ClientTimeout(total=40)) as resp:
                    events = await resp.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                await asyncio.sleep(0.2)
                continue
            for event in events if isinstance(events, list) else [events]:
                queue = self.queues.get(event.get("sender"))
                if queue is not None:
                    queue.put_nowait(event)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(20)
            try:
                await self.post(f"/janus/{self.session}", {"janus": "keepalive"})
            except Exception:
                pass

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        try:
            await self.post(f"/janus/{self.session}", {"janus": "destroy"})
        except Exception:
            pass
        await self.http.close()


def prefer_h264(transceiver) -> None:
    caps = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in caps if c.mimeType == "video/H264"
                                     and c.parameters.get("profile-level-id") == "42e01f"]
                                    + [c for c in caps if c.name == "rtx"])


async def connected(pc: RTCPeerConnection) -> None:
    deadline = time.monotonic() + 20
    while pc.connectionState != "connected":
        if time.monotonic() > deadline or pc.connectionState == "failed":
            raise RuntimeError("peer did not connect")
        await asyncio.sleep(0.05)


class Signaling:
    """Publish and view on one server, whichever protocol it speaks."""

    def __init__(self, info: dict) -> None:
        self.info = info
        self.http = aiohttp.ClientSession()
        self.janus: Janus | None = None
        self.feed = 0
        self.locations: list[str] = []
        self._lock = asyncio.Lock()

    async def _whip(self, path: str, offer: str, auth: bool) -> str:
        headers = {"Content-Type": "application/sdp"}
        if auth:
            headers["Authorization"] = f"Bearer {self.info['token']}"
        async with self.http.post(self.info["base"] + path, data=offer, headers=headers,
                                  timeout=aiohttp.ClientTimeout(total=20)) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"{path}: {resp.status} {body[:200]}")
            self.locations.append(resp.headers["Location"])
            return body

    async def _janus(self) -> Janus:
        async with self._lock:          # viewers join concurrently: one session, one feed lookup
            if self.janus is None:
                janus = Janus(self.info["base"])
                await janus.start()
                self.janus = janus
            return self.janus

    async def publish(self, pc: RTCPeerConnection) -> None:
        await pc.setLocalDescription(await pc.createOffer())
        if self.info["kind"] == "ods":
            answer = await self._whip(self.info["whip"], pc.localDescription.sdp, True)
        else:
            janus = await self._janus()
            handle = await janus.attach()
            await janus.message(handle, {"request": "joinandconfigure", "room": JANUS_ROOM, "ptype": "publisher",
                                         "display": "bench", "audio": True, "video": True},
                                {"type": "offer", "sdp": pc.localDescription.sdp})
            answer = (await janus.event(handle))["jsep"]["sdp"]
        check_loopback(answer)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def view(self, pc: RTCPeerConnection) -> None:
        if self.info["kind"] == "ods":
            prefer_h264(pc.addTransceiver("video", direction="recvonly"))
            pc.addTransceiver("audio", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            answer = await self._whip(self.info["whep"], pc.localDescription.sdp, False)
            check_loopback(answer)
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            return
        janus = await self._janus()
        async with self._lock:
            if not self.feed:
                handle = await janus.attach()
                reply = await janus.message(handle, {"request": "listparticipants", "room": JANUS_ROOM})
                publishers = [p for p in reply["plugindata"]["data"]["participants"] if p.get("publisher")]
                if not publishers:
                    raise RuntimeError("janus: nobody publishes in the bench room")
                self.feed = publishers[0]["id"]
        handle = await janus.attach()
        await janus.message(handle, {"request": "join", "ptype": "subscriber", "room": JANUS_ROOM,
                                     "streams": [{"feed": self.feed}]})
        offer = (await janus.event(handle))["jsep"]["sdp"]
        check_loopback(offer)
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await janus.message(handle, {"request": "start", "room": JANUS_ROOM},
                            {"type": "answer", "sdp": pc.localDescription.sdp})

    async def close(self) -> None:
        for location in reversed(self.locations):
            headers = {"Authorization": f"Bearer {self.info['token']}"} if self.info.get("token") else {}
            try:
                async with self.http.delete(self.info["base"] + location, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=5)):
                    pass
            except Exception:
                pass
        self.locations.clear()
        if self.janus is not None:
            await self.janus.close()
            self.janus = None
        await self.http.close()


# --- publisher (own process) and viewers ------------------------------------------------------

def payload_key(plain: bytes) -> bytes:
    return plain[-16:]


async def publisher_main(info_path: str, clip_path: str, log_path: str) -> None:
    """Publishes the clip; records when each video frame's last packet went to the socket."""
    import pickle
    import signal

    ice.configure(["127.0.0.1"])
    info = json.loads(Path(info_path).read_text())
    video, audio = pickle.loads(Path(clip_path).read_bytes())
    signaling = Signaling(info)
    pc = RTCPeerConnection(ice.rtc_configuration())
    prefer_h264(pc.addTransceiver(ClipTrack("video", video, 1 / FPS, 90000 // FPS, 90000), direction="sendonly"))
    pc.addTransceiver(ClipTrack("audio", audio, 0.02, 960, 48000), direction="sendonly")
    sent: list[tuple[str, float]] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await signaling.publish(pc)
    dtls = pc.getTransceivers()[0].sender.transport
    send_rtp = dtls._send_rtp
    video_pt = {c.payloadType for t in pc.getTransceivers() if t.kind == "video"
                for c in t._codecs if c.name != "rtx"}

    async def timed_send_rtp(data: bytes) -> None:
        # Timed as it is handed over (before, so a viewer can never see it "earlier").
        if data[1] & 0x80 and data[1] & 0x7F in video_pt:       # a video frame's last packet
            sent.append((payload_key(data).hex(), time.monotonic()))
        await send_rtp(data)

    dtls._send_rtp = timed_send_rtp
    await connected(pc)
    print("ready", flush=True)
    await stop.wait()
    Path(log_path).write_text(json.dumps(sent))
    await pc.close()
    await signaling.close()


class LightViewer:
    """A viewer that only counts: RTP reaches a counter straight from the DTLS transport."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(ice.rtc_configuration())
        self.packets = 0
        self.frames = 0
        self.arrivals: list[tuple[bytes, float]] = []
        self.sample = False

    def attach(self) -> None:
        """Count RTP where the datagram comes off the socket (the ICE protocol's
        datagram_received, called straight from the event loop's read callback): no
        coroutine hop, no SRTP except for the packets sampled for latency, and the arrival
        stamped before anything else, so a busy bench process adds as little as it can to
        the latency it measures.  STUN, DTLS and RTCP go on to aiortc as usual."""
        transceivers = self.pc.getTransceivers()
        dtls = transceivers[0].receiver.transport
        video_pt = {c.payloadType for t in transceivers if t.kind == "video" for c in t._codecs
                    if c.name != "rtx"}
        srtp = dtls._rx_srtp
        clock = time.monotonic

        for protocol in dtls.transport._connection._protocols:
            # A deep receive buffer: a moment without a CPU for this process must not drop
            # what the server sent (the kernel caps it at net.core.rmem_max).
            sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

            def received(data: bytes, addr, original=protocol.datagram_received) -> None:
                if len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 209:    # RTP, not RTCP
                    arrival = clock()
                    self.packets += 1
                    second = data[1]
                    if second & 0x80 and second & 0x7F in video_pt:
                        self.frames += 1
                        if self.sample:
                            try:
                                self.arrivals.append((payload_key(srtp.unprotect(data)), arrival))
                            except Exception:
                                pass
                    return
                original(data, addr)

            protocol.datagram_received = received


async def fanout_stats(info: dict) -> dict | None:
    """The ODS server's fan-out figures so far: loop CPU seconds, and p50/p99 of one incoming
    packet's fan-out wall time since the last call (None: not ODS)."""
    if info["kind"] != "ods":
        return None
    async with aiohttp.ClientSession() as http:
        async with http.get(info["base"] + "/bench/stats", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return await resp.json()


async def measure(mode: str, info: dict, viewers: int, args, clip_path: str, tmp: Path) -> dict:
    server = psutil.Process(info["pid"])
    info_path, log_path = tmp / "info.json", tmp / f"sent-{mode}-{viewers}.json"
    info_path.write_text(json.dumps(info))
    publisher = subprocess.Popen([sys.executable, __file__, "--publisher", str(info_path), clip_path, str(log_path)],
                                 stdout=subprocess.PIPE, cwd=REPO, text=True)
    signaling = Signaling(info)
    peers: list[LightViewer] = []
    load = [os.getloadavg()[0]]
    try:
        assert publisher.stdout is not None
        if publisher.stdout.readline().strip() != "ready":
            raise RuntimeError("publisher did not start")
        # Viewers join a few at a time so the handshakes do not starve the running streams.
        for start in range(0, viewers, 5):
            batch = [LightViewer() for _ in range(min(5, viewers - start))]
            await asyncio.gather(*(signaling.view(v.pc) for v in batch))
            await asyncio.gather(*(connected(v.pc) for v in batch))
            for v in batch:
                v.attach()
            peers += batch
        await asyncio.sleep(args.warmup)
        before_loop = await fanout_stats(info)
        before_cpu = process_cpu(info["pid"])
        before_split, before_switches = server.cpu_times()[:2], server.num_ctx_switches()
        before = [(v.packets, v.frames) for v in peers]
        for v in peers:
            v.sample = True
        started = time.monotonic()
        await asyncio.sleep(args.seconds)
        elapsed = time.monotonic() - started
        cpu = (process_cpu(info["pid"]) - before_cpu) / elapsed
        split = [(a - b) / elapsed for a, b in zip(server.cpu_times()[:2], before_split)]
        switches = [(a - b) / elapsed for a, b in zip(server.num_ctx_switches(), before_switches)]
        after_loop = await fanout_stats(info)
        loop = (after_loop["fanout_cpu"] - before_loop["fanout_cpu"]) / elapsed if after_loop else float("nan")
        span = after_loop["spans"] if after_loop and after_loop["spans"][0] is not None else [float("nan")] * 2
        gc_pauses = after_loop["gc"] if after_loop else [0, float("nan"), float("nan")]
        for v in peers:
            v.sample = False
        after = [(v.packets, v.frames) for v in peers]
        load.append(os.getloadavg()[0])
    finally:
        publisher.terminate()
        try:
            publisher.wait(15)
        except subprocess.TimeoutExpired:
            publisher.kill()
        for v in peers:
            await v.pc.close()
        await signaling.close()
        await asyncio.sleep(0.5)
    sent: dict[bytes, list[float]] = {}
    if log_path.exists():
        for key, at in json.loads(log_path.read_text()):
            sent.setdefault(bytes.fromhex(key), []).append(at)
    latency = []
    for v in peers:
        for key, arrival in v.arrivals:
            # The clip loops every 3 s: the send of these bytes within the last second.
            earlier = [t for t in sent.get(key, ()) if arrival - 1.0 <= t <= arrival]
            if earlier:
                latency.append(arrival - earlier[-1])
    fps = [(a[1] - b[1]) / elapsed for a, b in zip(after, before)]
    return {"mode": mode, "viewers": viewers, "cpu": cpu, "fanout_cpu": loop, "span_p50": span[0] * 1000,
            "span_p99": span[1] * 1000, "elapsed": elapsed, "gc_count": gc_pauses[0], "gc_max_ms": gc_pauses[1] * 1000,
            "pps": sum(a[0] - b[0] for a, b in zip(after, before)) / elapsed,
            "fps_median": statistics.median(fps) if fps else float("nan"), "fps_min": min(fps, default=float("nan")),
            "lat_p50": pct(latency, 0.5), "lat_p99": pct(latency, 0.99), "lat_p999": pct(latency, 0.999),
            "load": load, "user": split[0], "system": split[1], "switches": switches}


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system, every thread) the process has used, from the kernel's
    CPU-time clock of that process (what clock_getcpuclockid(pid) names: ((~pid) << 3) | 2),
    to the nanosecond.  /proc/PID/stat (psutil's cpu_times) counts 10 ms ticks: +-10 ms on a
    6 s window is +-15% of a 20-viewer step's extra CPU here, which the ratios would carry."""
    return time.clock_gettime(((~pid) << 3) | 2)


def measure_floor(binary: Path, viewers: int, pps: int, size: int, seconds: float) -> dict:
    load = [os.getloadavg()[0]]
    if viewers == 0:
        return {"mode": "floor", "viewers": 0, "cpu": 0.0, "pps": 0.0, "load": load * 2, "elapsed": seconds}
    out = subprocess.run([str(binary), str(viewers), str(pps), str(size), str(seconds)], capture_output=True,
                         text=True, timeout=seconds + 30, check=True)
    result = json.loads(out.stdout)
    load.append(os.getloadavg()[0])
    return {"mode": "floor", "viewers": viewers, "cpu": result["cpu"] / result["elapsed"],
            "pps": result["sent"] / result["elapsed"], "fps_median": float("nan"), "fps_min": float("nan"),
            "lat_p50": float("nan"), "lat_p99": float("nan"), "load": load, "elapsed": result["elapsed"]}


def pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def clip_packets(video: list[bytes], audio: list[bytes]) -> tuple[int, int]:
    """Packets per second and mean packet size on the wire (RTP + MID extension + SRTP tag)."""
    from aiortc.codecs.h264 import H264Encoder

    sizes = []
    for frame in video:
        sizes += [len(p) for p in H264Encoder._packetize(H264Encoder._split_bitstream(frame))]
    sizes += [len(p) for p in audio]
    pps = len(sizes) / CLIP_SECONDS
    return round(pps), round(statistics.mean(sizes)) + 12 + 8 + 10


# --- the run ----------------------------------------------------------------------------------

async def run(args) -> None:
    import pickle

    import asyncpg

    from odsmedia.storage import migrate

    ice.configure(["127.0.0.1"])
    tmp = Path(tempfile.mkdtemp(prefix="ods-sfu-bench-"))
    print("encoding the clip ...", file=sys.stderr)
    clip = make_clip()
    clip_path = tmp / "clip.pickle"
    clip_path.write_bytes(pickle.dumps(clip))
    kbps = sum(len(p) for p in clip[0]) * 8 / CLIP_SECONDS / 1000
    floor_pps, floor_size = clip_packets(*clip)
    print(f"clip: {kbps:.0f} kbit/s video, {floor_pps} packets/s, mean {floor_size} bytes on the wire",
          file=sys.stderr)
    native = build_native(tmp)
    modes = [m for m in args.modes if m in ("packet", "frame") or (m == "floor" and "sendfloor" in native)
             or (m.startswith("janus") and "lo_only.so" in native and shutil.which("janus"))]
    for m in set(args.modes) - set(modes):
        print(f"{m}: not available on this machine (janus or cc missing), skipped", file=sys.stderr)
    dbname = f"ods_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{dbname}"')
    database_url = ADMIN_DSN.rsplit("/", 1)[0] + "/" + dbname
    servers: dict[str, tuple[subprocess.Popen, dict]] = {}
    rows = []
    try:
        await migrate(database_url)
        for mode in modes:
            if mode in ("packet", "frame"):
                servers[mode] = start_ods(mode, database_url)
            elif mode == "janus":
                servers[mode] = start_janus(tmp, native["lo_only.so"], None)
            elif mode == "janus-el2":
                servers[mode] = start_janus(tmp, native["lo_only.so"], 2)
        for r in range(args.rounds):
            order = modes if r % 2 == 0 else list(reversed(modes))
            for n in [0, *args.viewers]:
                for mode in order:
                    print(f"round {r + 1}: {mode}, {n} viewers (load {os.getloadavg()[0]:.2f}) ...", file=sys.stderr)
                    if mode == "floor":
                        row = measure_floor(native["sendfloor"], n, floor_pps, floor_size, args.seconds)
                    else:
                        row = await asyncio.wait_for(measure(mode, servers[mode][1], n, args, str(clip_path), tmp),
                                                     args.seconds + args.warmup + 120)
                    row["round"] = r
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await admin.close()
        raw = Path(tempfile.gettempdir()) / f"ods-sfu-fanout-{time.strftime('%Y%m%dT%H%M%S')}.json"
        raw.write_text(json.dumps(rows, indent=1))
        print(f"raw rows: {raw}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    report(rows, kbps, floor_pps)


def report(rows: list[dict], kbps: float, pps: int) -> None:
    # A step whose viewers got under 95% of what the publisher sent, or over 105% (a backlog
    # caught up), measured a starved load generator or server, not a cost: left out of every
    # median and ratio, and listed.
    starved = [r for r in rows if r["viewers"] and r["mode"] != "floor"
               and not 0.95 <= r["pps"] / (r["viewers"] * pps) <= 1.05]
    if starved:
        print(f"\nleft out, delivered outside 95-105% of {pps} packets/s per viewer: " + ", ".join(
            f"{r['mode']} {r['viewers']} (round {r['round'] + 1}, {r['pps'] / r['viewers'] / pps:.0%})"
            for r in starved))
    rows = [r for r in rows if r not in starved]
    base = {(r["mode"], r["round"]): r["cpu"] for r in rows if r["viewers"] == 0}
    for r in rows:
        extra = r["cpu"] - base.get((r["mode"], r["round"]), 0.0)
        r["per_viewer"] = extra / r["viewers"] * 100 if r["viewers"] else float("nan")
        r["per_packet"] = extra / r["pps"] * 1e6 if r["viewers"] and r["pps"] else float("nan")
    for r in rows:
        loop = r.get("fanout_cpu", float("nan"))
        r["loop_per_packet"] = loop / r["pps"] * 1e6 if r["viewers"] and r["pps"] else float("nan")
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    counts = sorted({r["viewers"] for r in rows if r["viewers"]})
    print(f"\nclip: 1280x720 {FPS} fps H.264 42e01f at {kbps:.0f} kbit/s + Opus; {pps} RTP packets/s per viewer")
    print("\n| viewers | server | CPU per viewer (% core) | us per delivered packet | delivered pkt/s | "
          "fps median / min | forward latency p50 / p99 / p99.9 (ms) | load avg (1 min) |")
    print("|---|---|---|---|---|---|---|---|")

    def med(values):
        values = [v for v in values if not math.isnan(v)]
        return statistics.median(values) if values else float("nan")

    for n in counts:
        for mode in modes:
            rs = [r for r in rows if r["mode"] == mode and r["viewers"] == n]
            if not rs:
                continue
            loads = [x for r in rs for x in r["load"]]
            fps = f"{med([r['fps_median'] for r in rs]):.1f} / {min(r['fps_min'] for r in rs):.1f}" \
                if mode != "floor" else "-"
            lat = f"{med([r['lat_p50'] for r in rs]):.1f} / {med([r['lat_p99'] for r in rs]):.1f} / " \
                f"{med([r.get('lat_p999', float('nan')) for r in rs]):.1f}" if mode != "floor" else "-"
            print(f"| {n} | {mode} | {med([r['per_viewer'] for r in rs]):.3f} | {med([r['per_packet'] for r in rs]):.1f}"
                  f" | {med([r['pps'] for r in rs]):.0f} | {fps} | {lat} | {min(loads):.2f}-{max(loads):.2f} |")
    if "packet" in modes:
        print("\nPacket path: server CPU per delivered packet inside the fan-out loop (thread CPU clock "
              "around PacketFanout.on_packet: header rewrite, SRTP, sendto), median over rounds; the garbage "
              "collector's pauses in the server over the window; the server's kernel (system) share of its "
              "CPU, and the times a second it was preempted (involuntary context switches: each loopback send "
              "can wake a viewer that takes the server's core):\n")
        print("| viewers | in the loop (us) | whole server (us) | one packet's fan-out, p50 / p99 (ms) | "
              "GC pauses per s / longest (ms) | system share of CPU | preempted per s |")
        print("|---|---|---|---|---|---|---|")
        for n in counts:
            rs = [r for r in rows if r["mode"] == "packet" and r["viewers"] == n]
            if rs:
                print(f"| {n} | {med([r['loop_per_packet'] for r in rs]):.1f} | {med([r['per_packet'] for r in rs]):.1f}"
                      f" | {med([r.get('span_p50', float('nan')) for r in rs]):.2f} / "
                      f"{med([r.get('span_p99', float('nan')) for r in rs]):.2f} | "
                      f"{med([r.get('gc_count', 0) / r['elapsed'] for r in rs]):.1f} / "
                      f"{max(r.get('gc_max_ms', float('nan')) for r in rs):.1f} | "
                      f"{med([r['system'] / r['cpu'] if r.get('cpu') and 'system' in r else float('nan') for r in rs]):.0%} | "
                      f"{med([r['switches'][1] if 'switches' in r else float('nan') for r in rs]):.0f} |")
    if "packet" in modes and len(modes) > 1:
        print("\nRatios of us per delivered packet, computed within each round, median over rounds "
              "(> 1: the other costs more than the packet path):\n")
        others = [m for m in modes if m != "packet"]
        print("| viewers | " + " | ".join(f"{m} / packet" for m in others) + " |")
        print("|---|" + "---|" * len(others))
        for n in counts:
            cells = []
            for m in others:
                ratios = []
                for r in {x["round"] for x in rows}:
                    p = next((x for x in rows if x["mode"] == "packet" and x["viewers"] == n and x["round"] == r), None)
                    o = next((x for x in rows if x["mode"] == m and x["viewers"] == n and x["round"] == r), None)
                    if p and o and p["per_packet"] > 0:
                        ratios.append(o["per_packet"] / p["per_packet"])
                cells.append(f"{med(ratios):.2f}" if ratios else "-")
            print(f"| {n} | " + " | ".join(cells) + " |")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        # Re-print the tables of an earlier run from its raw rows: --report FILE
        rows = json.loads(Path(sys.argv[2]).read_text())
        report(rows, float("nan"), round(max(r["pps"] / r["viewers"] for r in rows if r["mode"] == "floor" and r["viewers"])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", default="1,5,10,20,40", help="viewer counts")
    parser.add_argument("--modes", default="packet,frame,janus,janus-el2,floor", help="servers to measure")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating the order of the servers")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured window per step")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--serve", choices=("packet", "frame"), help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--publisher", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publisher:
        asyncio.run(publisher_main(*args.publisher))
    elif args.serve:
        from odsmedia.cli import run_async

        run_async(serve_ods(args.database_url, args.prefix, args.serve))   # uvloop, as `odsmedia serve`
    else:
        import signal

        signal.signal(signal.SIGTERM, signal.default_int_handler)   # stop like Ctrl-C: servers and database cleaned up
        args.viewers = [int(v) for v in args.viewers.split(",") if v]
        if any(v < 0 or v > 100 for v in args.viewers) or not 1 <= args.rounds <= 10 or args.seconds > 60:
            parser.error("at most 100 viewers, 10 rounds and 60 s windows")
        args.modes = [m for m in args.modes.split(",") if m]
        asyncio.run(asyncio.wait_for(run(args), 3600))


if __name__ == "__main__":
    main()
