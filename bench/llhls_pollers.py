"""1,000 concurrent LL-HLS blocking pollers against one origin process, before/after.

    .venv/bin/python bench/llhls_pollers.py [--pollers 1000] [--seconds 10] [--rounds 1]

Creates a throwaway database (dropped at the end), uses the local Redis under a
throwaway prefix, and runs the full app (this process, uvloop) on a loopback
port with a live recording of a gated ("signed-in") room fed in real time
(synthetic H.264 + Opus, 2 s segments, 0.5 s parts).  The pollers live in a
child process (its CPU is not the server's): each follows blocking playlist
reload the way a player does, asking for the part its last response's
EXT-X-PRELOAD-HINT names.

Two modes, measured in the same run, alternating per round:

- **before**: every poll is admitted by the gate (a viewer's bearer token) and
  looks the episode up in Postgres (the live episode cache off);
- **after**: polls carry the signed URL token (no gate query) and the live
  episode cache is on (what the viewer page and a CDN do now).

Per mode: delay from a part being listed on the live playlist (the server's
CLOCK_MONOTONIC) to each poller that was waiting for it getting its response
(the child's CLOCK_MONOTONIC, same clock), p50/p99 over responses, and per
part the time until *all* waiting pollers were answered (p50/p99 over parts);
server CPU over the window minus the same process's CPU with no pollers
(recording alone), per poller; Postgres episode lookups and gate decisions
during the window.  Prints the 1-minute load average with each row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
from aiohttp import web  # noqa: E402

from testsupport.services import ADMIN_DSN, REDIS_URL, throwaway  # noqa: E402

HINT = re.compile(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([0-9]+)-[0-9]+\.([0-9]+)\.m4s')


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# --- the pollers (child process) -------------------------------------------------------------

async def poll(args: argparse.Namespace) -> None:
    headers = json.loads(args.headers)
    extra = json.loads(args.params)
    url = args.url
    records: list[tuple[int, int, float, float]] = []
    errors: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def first() -> tuple[int, int]:
            async with session.get(url, params=extra, headers=headers) as resp:
                text = await resp.text()
            match = HINT.search(text)
            return int(match.group(1)), int(match.group(2))

        start = await first()
        window: dict[str, float] = {}

        async def poller() -> None:
            msn, part = start
            while time.monotonic() < window["end"]:
                asked = time.monotonic()
                params = {**extra, "_HLS_msn": str(msn), "_HLS_part": str(part)}
                try:
                    async with session.get(url, params=params, headers=headers) as resp:
                        text = await resp.text()
                        status = resp.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = 0
                answered = time.monotonic()
                if status != 200:
                    errors[status] = errors.get(status, 0) + 1
                    msn, part = await first()
                    continue
                if window["start"] <= asked:
                    records.append((msn, part, asked, answered))
                match = HINT.search(text)
                msn, part = int(match.group(1)), int(match.group(2))

        now = time.monotonic()
        # A second to open the connections and line up; then the measured window.
        window["start"] = now + 1.0
        window["end"] = window["start"] + args.seconds
        print(json.dumps({"window": [window["start"], window["end"]]}), flush=True)
        await asyncio.wait_for(asyncio.gather(*(poller() for _ in range(args.pollers))), args.seconds + 40)
    print(json.dumps({"records": records, "errors": errors}), flush=True)


# --- nginx in front (docs/operations.md's config, on loopback) --------------------------------

class Nginx:
    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.port = port

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def documented_nginx(origin_port: int, port: int, root: Path) -> str:
    """The ```nginx block of docs/operations.md, pointed at this origin on loopback, without TLS."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    block = doc.split("```nginx\n", 1)[1].split("```", 1)[0]
    replaced = {
        "/var/cache/nginx/ods": str(root / "cache"),
        "server 10.0.0.11:8080;": f"server 127.0.0.1:{origin_port};",
    }
    for old, new in replaced.items():
        assert old in block, f"docs/operations.md no longer has {old!r}"
        block = block.replace(old, new)
    block = re.sub(r"listen 443 ssl http2;[^\n]*", f"listen 127.0.0.1:{port} reuseport;", block)
    return f"""worker_processes 1;
daemon off;
user root;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
{block}
}}
"""


async def start_nginx(origin_port: int, root: Path) -> Nginx:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root.mkdir(parents=True, exist_ok=True)
    (root / "nginx.conf").write_text(documented_nginx(origin_port, port, root))
    process = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(root), "-c",
                                str(root / "nginx.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(100):
        with socket.socket() as client:
            if client.connect_ex(("127.0.0.1", port)) == 0:
                return Nginx(process, port)
        if process.poll() is not None:
            raise RuntimeError("nginx did not start: " + process.stderr.read().decode()[-500:])
        await asyncio.sleep(0.1)
    raise RuntimeError("nginx did not listen")


# --- the origin (this process) ---------------------------------------------------------------

async def main(args: argparse.Namespace) -> None:
    async with throwaway(args.admin_dsn, args.redis_url) as services:
        await measure(args, services)


async def measure(args: argparse.Namespace, services) -> None:
    from odsmedia.app import make_app
    from odsmedia.auth import tokens
    from odsmedia.gate import Entry
    from odsmedia.metrics import gate_decisions
    from odsmedia.rooms import directory
    from recorder.recorder import RECORDER
    from recorder.routes import HLS_ORIGIN
    from testsupport.synthetic import SyntheticSession, feed_sinks

    tmp = Path(tempfile.mkdtemp(prefix="ods-bench-"))
    runner = None
    feeder = None
    proxy = None
    try:
        pool = await asyncpg.create_pool(services.database_url, min_size=1, max_size=2)
        room = await directory.create(pool, "bench-gated", policy="signed-in")
        viewer_token, _ = await tokens.mint(pool, room_id=room.id, role="viewer", ttl_seconds=3600)
        await pool.close()
        config = services.config(tmp / "data", ODS_RECORDING_SEGMENT_SECONDS="2", ODS_RECORDING_PART_SECONDS="0.5",
                                 ODS_RECORDING_RECONNECT_GRACE="0")
        app = make_app(config)
        handled: list[tuple[int, int, float, float]] = []

        @web.middleware
        async def served(request: web.Request, handler):
            # When the origin finished each blocking response (before the socket write), so the
            # server's share is seen apart from the client process's scheduling.
            asked = time.monotonic()
            response = await handler(request)
            msn, part = request.query.get("_HLS_msn"), request.query.get("_HLS_part")
            if msn is not None and part is not None and response.status == 200:
                handled.append((int(msn), int(part), asked, time.monotonic()))
            return response

        app.middlewares.append(served)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        origin = app[HLS_ORIGIN]

        # The live session: long enough for every round, fed at its capture pace.
        rounds = args.rounds
        total = rounds * 2 * (args.seconds + 2 * args.idle_seconds + 15) + 30
        recording = app[RECORDER].recording_for(room.id, room.slug, room.title)
        sinks = {"video": recording.add_track("video"), "audio": recording.add_track("audio")}
        published: dict[tuple[int, int], float] = {}
        listed = recording._part_written

        def observed(part) -> None:
            listed(part)
            published[(part.seq, part.index)] = time.monotonic()

        recording._part_written = observed
        frames = SyntheticSession(total, gop_seconds=1.0, jitter=0.0).frames

        feeder = asyncio.create_task(feed_sinks(sinks, frames))
        await recording.created.wait()
        await recording.live.wait_for(1, 1, timeout=30)
        url = f"http://127.0.0.1:{port}/episodes/{recording.episode_id}/live.m3u8"
        token = origin.tokens.mint(recording.episode_id)
        modes = {
            "before": ({"Authorization": f"Bearer {viewer_token}"}, {}, 0.0, url),
            "after": ({}, {"token": token}, origin.live_episodes.ttl, url),
        }
        if args.nginx:
            proxy = await start_nginx(port, tmp / "nginx")
            modes["nginx"] = ({}, {"token": token}, origin.live_episodes.ttl,
                              url.replace(f":{port}/", f":{proxy.port}/"))

        def allowed() -> float:
            return gate_decisions.labels(Entry.REPLAY.value, "allowed")._value.get()

        print(f"{args.pollers} pollers, {args.seconds:.0f} s window per mode, {rounds} round(s); "
              f"cpu count {os.cpu_count()}")
        print(f"{'mode':7} {'answers':>8} {'p50 ms':>7} {'p99 ms':>7} {'all-answered p50':>17} {'p99':>7} "
              f"{'cpu %':>6} {'idle %':>7} {'us/poller/s':>12} {'us/answer':>10} {'pg lookups':>11} {'gate':>6} "
              f"{'errors':>8} {'origin/part':>11} load1")
        order = list(modes)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                headers, params, ttl, target = modes[name]
                origin.live_episodes.ttl = ttl
                # The recording alone, same process, just before: what the pollers add is the rest.
                idle0, wall0 = time.process_time(), time.monotonic()
                await asyncio.sleep(args.idle_seconds)
                idle = (time.process_time() - idle0) / (time.monotonic() - wall0)
                child = await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--poll", target, "--pollers", str(args.pollers),
                    "--seconds", str(args.seconds), "--headers", json.dumps(headers), "--params", json.dumps(params),
                    stdout=asyncio.subprocess.PIPE, limit=64 * 1024 * 1024)
                window = json.loads(await asyncio.wait_for(child.stdout.readline(), 60))["window"]
                await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
                handled.clear()
                cpu0, t0 = time.process_time(), time.monotonic()
                queries0, gate0 = origin.live_episodes.queries, allowed()
                await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
                cpu = (time.process_time() - cpu0) / (time.monotonic() - t0)
                queries, gate = origin.live_episodes.queries - queries0, allowed() - gate0
                result = json.loads(await asyncio.wait_for(child.stdout.readline(), args.seconds + 60))
                await child.wait()
                delays, last = [], {}
                for msn, part, asked, answered in result["records"]:
                    at = published.get((msn, part))
                    if at is None or asked >= at:
                        continue         # not a wait: the part existed when asked
                    delays.append(answered - at)
                    last[(msn, part)] = max(last.get((msn, part), 0.0), answered - at)
                server, server_last = [], {}
                for (msn, part, asked, done) in handled:
                    at = published.get((msn, part))
                    if at is not None and asked < at:        # it waited for the part
                        server.append(done - at)
                        server_last[(msn, part)] = max(server_last.get((msn, part), 0.0), done - at)
                server = server or [float("nan")]
                server_parts = list(server_last.values()) or [float("nan")]
                per_part = list(last.values()) or [float("nan")]
                delays = delays or [float("nan")]
                extra = max(0.0, cpu - idle)
                print(f"{name:7} {len(delays):8d} {statistics.median(delays) * 1000:7.1f} "
                      f"{pct(delays, 99) * 1000:7.1f} "
                      f"{statistics.median(per_part) * 1000:17.1f} {pct(per_part, 99) * 1000:7.1f} "
                      f"{cpu * 100:6.1f} {idle * 100:7.1f} {extra / args.pollers * 1e6:12.1f} "
                      f"{extra * args.seconds / max(1, len(result['records'])) * 1e6:10.0f} {queries:11d} "
                      f"{gate:6.0f} {str(result['errors']):>8} {len(handled) / max(1, len(last)):11.1f} "
                      f"{os.getloadavg()[0]:.2f}", flush=True)
                print(f"{'':7} server side (part listed -> response handed to aiohttp): p50 "
                      f"{statistics.median(server) * 1000:.1f} ms, p99 {pct(server, 99) * 1000:.1f} ms; "
                      f"all of one part's waiters: p50 {statistics.median(server_parts) * 1000:.1f} ms, "
                      f"p99 {pct(server_parts, 99) * 1000:.1f} ms", flush=True)
    finally:
        if proxy is not None:
            proxy.stop()
        if feeder is not None:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pollers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--nginx", action="store_true",
                        help="a third mode: the pollers through nginx with docs/operations.md's proxy_cache config")
    parser.add_argument("--admin-dsn", default=ADMIN_DSN)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--poll", metavar="URL", dest="url", help=argparse.SUPPRESS)
    parser.add_argument("--headers", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.pollers = max(1, min(args.pollers, 5000))
    args.seconds = max(1.0, min(args.seconds, 60.0))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.pollers + 256)), hard))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(poll(args) if args.url else main(args))


if __name__ == "__main__":
    cli()
