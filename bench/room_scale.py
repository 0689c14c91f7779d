"""Room scale benchmark: one room's viewers on 1 and then 2 worker processes (`odsmedia serve --workers N`).

The publisher and the viewers are bench/sfu_fanout.py's (imported, not copied):
a pre-encoded 1280x720 30 fps H.264 clip at ~1.5 Mbit/s plus Opus, published
over WHIP by its own process that logs when each video frame's last packet
leaves; viewers are ``LightViewer`` aiortc peers in this process that count
RTP and timestamp sampled frames. Everything on 127.0.0.1.

Servers, each the real CLI with recording off:

* ``one``: ``odsmedia serve --workers 1``; the publisher and every viewer on it.
* ``two``: ``odsmedia serve --workers 2`` with ``rooms.relay_threshold = 0``;
  the publisher on worker 0 (the origin), viewers split evenly between
  worker 0 and worker 1, where they are served by a relay fed over one pipe.
  Without relays in the build (``odsmedia.rooms.relay`` absent), worker 1
  would send its viewers to the origin (307), so the run measures two rooms
  instead, each with its own publisher and origin on its own worker, and says so.

Per step (total viewers N): publisher and viewers connected, warm-up, then a
measured window. Per worker: CPU = user+system time of that process over
the window (psutil); its viewers' fps (completed video frames per second;
"at 30 fps" = at least 29); forward latency = publisher handing a frame's
last packet to its socket -> a viewer receiving it, p50/p99, for viewers on
the origin and for viewers behind the relay. Per-viewer cost = (worker CPU
at N - the same worker with the publisher alone) / its viewers. Pipe cost:
the origin's CPU with one viewer on the relay (so one pipe) minus the
publisher alone, against one viewer's cost on the origin. The 1-minute load
average is recorded with every step.

    .venv/bin/python bench/room_scale.py [--viewers 10,20,40] [--seconds 6] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import psutil  # noqa: E402
import redis.asyncio as redis  # noqa: E402

import sfu_fanout as fanout  # noqa: E402
from odsmedia.media import ice  # noqa: E402

RELAYS = (REPO / "odsmedia" / "rooms" / "relay.py").exists()
SECRET = "bench-secret-key-0123456789-abcdefghijklmnop"


@dataclass
class Worker:
    index: int
    url: str
    pid: int


@dataclass
class Stream:
    """One room: its publisher goes to ``origin``; its host token and WHIP/WHEP paths."""

    slug: str
    token: str
    origin: Worker

    def info(self, worker: Worker) -> dict:
        return {"kind": "ods", "base": worker.url, "whip": f"/rooms/{self.slug}/whip",
                "whep": f"/rooms/{self.slug}/whep", "token": self.token}


@dataclass
class Server:
    proc: subprocess.Popen
    workers: list[Worker]
    data: Path
    streams: list[Stream] = field(default_factory=list)


async def start_server(count: int, database_url: str, tmp: Path) -> Server:
    prefix = f"odsbench:{uuid.uuid4().hex[:6]}:"
    data = tmp / f"data-{count}-{uuid.uuid4().hex[:4]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ODS_")}
    env.update(DATABASE_URL=database_url, REDIS_URL=fanout.REDIS_URL, ODS_REDIS_PREFIX=prefix, ODS_DATA_DIR=str(data),
               ODS_ICE_ADDRESSES="127.0.0.1", ODS_HTTP_PORT="0", ODS_RECORDING_ENABLED="false",
               ODS_LOG_LEVEL="warning", ODS_SECRET_KEY=SECRET, ODS_MAIL_BACKEND="outbox",
               ODS_ROOMS_RELAY_THRESHOLD="0", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "odsmedia", "serve", "--workers", str(count)], env=env,
                            stdout=subprocess.PIPE, cwd=REPO, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"odsmedia serve --workers {count} did not start: {line!r}")
    if count == 1:
        return Server(proc, [Worker(0, match.group(1), proc.pid)], data)
    client = redis.from_url(fanout.REDIS_URL)
    try:
        deadline = time.monotonic() + 60
        while True:
            workers = []
            for raw in await client.zrange(prefix + "nodes", 0, -1):
                record = {k.decode(): v.decode() for k, v in (await client.hgetall(prefix + "node:" + raw.decode())).items()}
                if record:
                    index = int(record["worker"])
                    pid = json.loads((data / f"node-id-worker{index}").read_text())["pid"]
                    workers.append(Worker(index, record["url"], pid))
            if len(workers) == count:
                return Server(proc, sorted(workers, key=lambda w: w.index), data)
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(workers)} of {count} workers registered")
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


async def add_stream(server: Server, origin: Worker, database_url: str) -> Stream:
    from odsmedia.auth import tokens
    from odsmedia.rooms import directory
    from odsmedia.storage import connect

    pool = await connect(database_url, max_size=1)
    try:
        slug = "scale-" + uuid.uuid4().hex[:8]
        record = await directory.create(pool, slug, title="room scale bench")
        token, _ = await tokens.mint(pool, room_id=record.id, role="host", ttl_seconds=7200)
    finally:
        await pool.close()
    stream = Stream(slug, token, origin)
    server.streams.append(stream)
    return stream


async def settled(stream: Stream) -> None:
    """Until the origin lists exactly this step's publications (video + audio): a previous step's
    publisher that was killed rather than stopped leaves its own until its peer times out."""
    import aiohttp

    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{stream.origin.url}/api/rooms/{stream.slug}") as resp:
                if (await resp.json()).get("publications") == 2:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{stream.slug}: the publications did not settle")
            await asyncio.sleep(0.2)


def stop_server(server: Server) -> None:
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(60)
    except subprocess.TimeoutExpired:
        server.proc.kill()


async def measure(label: str, server: Server, placement: list[tuple[Stream, Worker]], args, clip_path: str,
                  tmp: Path) -> dict:
    """Publishers of every stream up, then one viewer per ``placement`` entry (stream, worker it joins)."""
    procs = {w.index: psutil.Process(w.pid) for w in server.workers}
    publishers, logs, signalings = [], [], []
    viewers: list[tuple[fanout.LightViewer, Stream, Worker]] = []
    load = [os.getloadavg()[0]]
    try:
        for stream in server.streams:
            info_path = tmp / f"info-{stream.slug}.json"
            info_path.write_text(json.dumps(stream.info(stream.origin)))
            log_path = tmp / f"sent-{label}-{stream.slug}.json"
            logs.append(log_path)
            publisher = subprocess.Popen([sys.executable, fanout.__file__, "--publisher", str(info_path), clip_path,
                                          str(log_path)], stdout=subprocess.PIPE, cwd=REPO, text=True)
            publishers.append(publisher)
            assert publisher.stdout is not None
            if publisher.stdout.readline().strip() != "ready":
                raise RuntimeError("publisher did not start")
        for stream in server.streams:
            await settled(stream)
        for start in range(0, len(placement), 5):
            batch = []
            for stream, worker in placement[start:start + 5]:
                signaling = fanout.Signaling(stream.info(worker))
                signalings.append(signaling)
                batch.append((fanout.LightViewer(), stream, worker, signaling))
            await asyncio.gather(*(s.view(v.pc) for v, _, _, s in batch))
            await asyncio.gather(*(fanout.connected(v.pc) for v, _, _, _ in batch))
            for v, stream, worker, _ in batch:
                v.attach()
                viewers.append((v, stream, worker))
        await asyncio.sleep(args.warmup)
        before_cpu = {i: sum(p.cpu_times()[:2]) for i, p in procs.items()}
        before = [v.frames for v, _, _ in viewers]
        for v, _, _ in viewers:
            v.sample = True
        started = time.monotonic()
        await asyncio.sleep(args.seconds)
        elapsed = time.monotonic() - started
        cpu = {i: (sum(p.cpu_times()[:2]) - before_cpu[i]) / elapsed for i, p in procs.items()}
        for v, _, _ in viewers:
            v.sample = False
        after = [v.frames for v, _, _ in viewers]
        load.append(os.getloadavg()[0])
    finally:
        for publisher in publishers:
            publisher.terminate()
            try:
                publisher.wait(15)
            except subprocess.TimeoutExpired:
                publisher.kill()
        for v, _, _ in viewers:
            await v.pc.close()
        for signaling in signalings:
            await signaling.close()
        await asyncio.sleep(1.0)
    sent: dict[bytes, list[float]] = {}
    for log_path in logs:
        if log_path.exists():
            for key, at in json.loads(log_path.read_text()):
                sent.setdefault(bytes.fromhex(key), []).append(at)
    groups: dict[str, dict] = {}
    for (v, stream, worker), b, a in zip(viewers, before, after):
        relayed = worker.index != stream.origin.index
        group = groups.setdefault(f"w{worker.index}", {"worker": worker.index, "viewers": 0, "fps": [],
                                                        "lat_origin": [], "lat_relay": []})
        group["viewers"] += 1
        group["fps"].append((a - b) / elapsed)
        for key, arrival in v.arrivals:
            earlier = [t for t in sent.get(key, ()) if arrival - 1.0 <= t <= arrival]
            if earlier:
                group["lat_relay" if relayed else "lat_origin"].append(arrival - earlier[-1])
    per_worker = []
    for w in server.workers:
        g = groups.get(f"w{w.index}", {"viewers": 0, "fps": [], "lat_origin": [], "lat_relay": []})
        per_worker.append({
            "worker": w.index, "cpu": cpu[w.index], "viewers": g["viewers"],
            "at_30fps": sum(f >= 29 for f in g["fps"]),
            "fps_median": statistics.median(g["fps"]) if g["fps"] else float("nan"),
            "fps_min": min(g["fps"], default=float("nan")),
            "origin_p50": fanout.pct(g["lat_origin"], 0.5), "origin_p99": fanout.pct(g["lat_origin"], 0.99),
            "relay_p50": fanout.pct(g["lat_relay"], 0.5), "relay_p99": fanout.pct(g["lat_relay"], 0.99),
        })
    return {"label": label, "viewers": len(viewers), "workers": per_worker, "load": load, "elapsed": elapsed}


async def run(args) -> list[dict]:
    import asyncpg

    from odsmedia.storage import migrate

    ice.configure(["127.0.0.1"])
    tmp = Path(tempfile.mkdtemp(prefix="ods-room-scale-"))
    print("encoding the clip ...", file=sys.stderr)
    clip_path = tmp / "clip.pickle"
    clip_path.write_bytes(pickle.dumps(fanout.make_clip()))
    dbname = f"ods_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(fanout.ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{dbname}"')
    database_url = fanout.ADMIN_DSN.rsplit("/", 1)[0] + "/" + dbname
    rows: list[dict] = []

    async def step(label: str, server: Server, placement: list[tuple[Stream, Worker]]) -> None:
        print(f"{label}: {len(placement)} viewers (load {os.getloadavg()[0]:.2f}) ...", file=sys.stderr)
        try:
            row = await asyncio.wait_for(measure(label, server, placement, args, str(clip_path), tmp),
                                         args.seconds + args.warmup + 180)
        except (RuntimeError, asyncio.TimeoutError) as exc:
            # A starved machine can drop the publisher mid-step: say so and go on with the next step.
            print(f"{label}, {len(placement)} viewers: step failed: {exc}", file=sys.stderr)
            return
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    try:
        await migrate(database_url)
        for _ in range(args.rounds):
            one = await start_server(1, database_url, tmp)
            try:
                stream = await add_stream(one, one.workers[0], database_url)
                for n in [0, 1, *args.viewers]:
                    await step("one", one, [(stream, one.workers[0])] * n)
            finally:
                stop_server(one)
            two = await start_server(2, database_url, tmp)
            try:
                origin, other = two.workers
                if RELAYS:
                    stream = await add_stream(two, origin, database_url)
                    await step("two", two, [])
                    await step("pipe", two, [(stream, other)])       # one relay, one pipe, one viewer there
                    for n in args.viewers:
                        await step("two", two, [(stream, origin if i % 2 == 0 else other) for i in range(n)])
                else:
                    rooms = [await add_stream(two, origin, database_url), await add_stream(two, other, database_url)]
                    await step("two-rooms", two, [])
                    for n in args.viewers:
                        await step("two-rooms", two, [(rooms[i % 2], rooms[i % 2].origin) for i in range(n)])
            finally:
                stop_server(two)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await admin.close()
        raw = Path(tempfile.gettempdir()) / f"ods-room-scale-{time.strftime('%Y%m%dT%H%M%S')}.json"
        raw.write_text(json.dumps(rows, indent=1))
        print(f"raw rows: {raw}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def report(rows: list[dict]) -> None:
    def med(values):
        values = [v for v in values if v == v]
        return statistics.median(values) if values else float("nan")

    base = {}
    for r in rows:
        if r["viewers"] == 0:
            for w in r["workers"]:
                base.setdefault((r["label"].replace("pipe", "two"), w["worker"]), []).append(w["cpu"])
    base = {k: med(v) for k, v in base.items()}
    print("\n| server | viewers | worker | its viewers | at 30 fps | fps median / min | CPU (% core) | "
          "CPU per viewer (% core) | latency via origin p50 / p99 (ms) | via relay p50 / p99 (ms) | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for w in r["workers"]:
            extra = w["cpu"] - base.get((r["label"].replace("pipe", "two"), w["worker"]), 0.0)
            per = extra / w["viewers"] * 100 if w["viewers"] else float("nan")
            print(f"| {r['label']} | {r['viewers']} | {w['worker']} | {w['viewers']} | {w['at_30fps']} | "
                  f"{w['fps_median']:.1f} / {w['fps_min']:.1f} | {w['cpu'] * 100:.1f} | {per:.2f} | "
                  f"{w['origin_p50']:.1f} / {w['origin_p99']:.1f} | {w['relay_p50']:.1f} / {w['relay_p99']:.1f} | "
                  f"{min(r['load']):.2f}-{max(r['load']):.2f} |")
    pipe = [r for r in rows if r["label"] == "pipe"]
    one1 = [r for r in rows if r["label"] == "one" and r["viewers"] == 1]
    if pipe and one1:
        pipe_cost = med([p["workers"][0]["cpu"] - base[("two", 0)] for p in pipe])
        viewer_cost = med([o["workers"][0]["cpu"] - base[("one", 0)] for o in one1])
        print(f"\npipe cost at the origin: {pipe_cost * 100:.2f} % of a core; one viewer on the origin: "
              f"{viewer_cost * 100:.2f} %; ratio {pipe_cost / viewer_cost if viewer_cost > 0 else float('nan'):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", default="10,20,40", help="total viewer counts")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured window per step")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    args = parser.parse_args()
    args.viewers = [int(v) for v in args.viewers.split(",") if v]
    if any(v < 1 or v > 100 for v in args.viewers) or not 1 <= args.rounds <= 5 or args.seconds > 60:
        parser.error("1-100 viewers, at most 5 rounds and 60 s windows")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report(asyncio.run(asyncio.wait_for(run(args), 3600)))


if __name__ == "__main__":
    main()
