"""Chat fan-out benchmark: N WebSocket clients in one room over two server processes.

Method: a fresh database (migrated) and Redis prefix; two real ``odsmedia serve``
processes sharing them; ``--clients`` readers split evenly between the two
(joined before measuring); ``--posters`` posting clients, also split, together
posting ``--rate`` messages per second for ``--duration`` seconds. Every message
carries its send time (CLOCK_MONOTONIC, shared by all processes of the machine);
every reader counts the items it receives, and every ``--sample``-th reader
(both servers alike) records the delivery latency of each. Reported:
delivered items/s (all readers together), expected deliveries and the ones
missing, latency p50/p99/max, CPU of each server process (psutil, over the
measured window) and of the load generator.

The readers are raw asyncio protocols with a minimal WebSocket frame parser
(no coroutine per message), so the load generator spends as little CPU as
possible on the cores the servers share; they live in ``--reader-procs``
child processes so that their work does not delay the posters' clock. Everything runs on 127.0.0.1 and is
bounded: connection setup, the run and the drain each have a deadline.

    .venv/bin/python bench/chat_fanout.py [--clients 1000] [--rate 100] [--duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from odsmedia.auth import tokens  # noqa: E402
from odsmedia.rooms import directory  # noqa: E402
from odsmedia.storage import migrate  # noqa: E402

ADMIN_DSN = os.environ.get("ODS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ODS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
STAMP = re.compile(rb"@(\d+)@")


class Reader(asyncio.Protocol):
    """A chat reader: handshake, join, then count item frames and their latency."""

    def __init__(self, host: str, port: int, path: str, stats: "Stats", sample: bool) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(secrets.token_bytes(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        self.stats = stats
        self.sample = sample
        self.buffer = bytearray()
        self.upgraded = False
        self.welcomed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.items = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                self._fail(RuntimeError(self.buffer[:200].decode(errors="replace")))
                return
            del self.buffer[:end + 4]
            self.upgraded = True
            self.transport.write(_client_frame(b'{"type":"join"}'))
        buf = self.buffer
        pos = 0
        now_ns = None
        while len(buf) - pos >= 2:
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if len(buf) - pos < head + length:
                break
            opcode = buf[pos] & 0x0F
            start = pos + head
            pos = start + length
            if opcode == 1:
                if buf.startswith(b'{"type":"item"', start):
                    self.items += 1
                    if self.sample:  # latency from the send time stamped into the text
                        match = STAMP.search(buf, start, pos)
                        if match:
                            if now_ns is None:
                                now_ns = time.monotonic_ns()
                            self.stats.record(now_ns - int(match.group(1)))
                elif buf.startswith(b'{"type":"welcome"', start) and not self.welcomed.done():
                    self.welcomed.set_result(orjson.loads(bytes(buf[start:pos]))["cursor"])
            elif opcode == 9:  # ping -> pong
                self.transport.write(_client_frame(bytes(buf[start:pos]), opcode=0xA))
            elif opcode == 8:
                self.transport.close()
        del buf[:pos]

    def _fail(self, exc: Exception) -> None:
        if not self.welcomed.done():
            self.welcomed.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError("closed"))


def _client_frame(payload: bytes, opcode: int = 1) -> bytes:
    mask = secrets.token_bytes(4)
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big") if n else b""
    return head + mask + masked


class Stats:
    def __init__(self) -> None:
        self.latencies_ns: list[int] = []
        self.measuring = False

    def record(self, latency_ns: int) -> None:
        if self.measuring:
            self.latencies_ns.append(latency_ns)


def start_server(name: str, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "odsmedia", "serve"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            break
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if match:
            return proc, int(match.group(1))
    proc.kill()
    raise RuntimeError(f"server {name} did not start")


# -- reader processes -------------------------------------------------------------------

def reader_process(ports: list[int], first: int, count: int, sample: int, conn) -> None:
    """A child process holding ``count`` readers (reader i on ports[i % 2]); answers the
    parent's commands on ``conn``: "measure", "count" (-> items), "stop" (-> items, latencies)."""
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stats = Stats()
        readers: list[Reader] = []
        sem = asyncio.Semaphore(25)

        async def connect(i: int) -> None:
            async with sem:
                port = ports[i % 2]
                _, reader = await loop.create_connection(
                    lambda: Reader("127.0.0.1", port, "/rooms/bench/chat", stats, i % sample == 0),
                    "127.0.0.1", port)
                readers.append(reader)
                await asyncio.wait_for(reader.welcomed, 20)

        await asyncio.wait_for(asyncio.gather(*(connect(first + i) for i in range(count))), 120)
        conn.send(("ready", len(readers)))
        done = asyncio.Event()

        def on_command() -> None:
            command = conn.recv()
            if command == "count":
                os.set_blocking(conn.fileno(), True)
                conn.send(sum(r.items for r in readers))
                os.set_blocking(conn.fileno(), False)
                return
            if command == "measure":
                stats.measuring = True
            elif command == "count":
                conn.send(sum(r.items for r in readers))
            elif command == "stop":
                loop.remove_reader(conn.fileno())
                os.set_blocking(conn.fileno(), True)  # the event loop made it non-blocking
                conn.send((sum(r.items for r in readers), stats.latencies_ns))
                done.set()

        loop.add_reader(conn.fileno(), on_command)
        await asyncio.wait_for(done.wait(), 600)
        for reader in readers:
            if reader.transport is not None:
                reader.transport.close()

    runner(main())


async def run(args: argparse.Namespace) -> None:
    import multiprocessing

    dbname = f"ods_bench_{uuid.uuid4().hex[:8]}"
    prefix = f"odsbench:{uuid.uuid4().hex[:8]}:"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{dbname}"')
    database_url = ADMIN_DSN.rsplit("/", 1)[0] + "/" + dbname
    procs: list[subprocess.Popen] = []
    children: list = []
    try:
        await migrate(database_url)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        room = await directory.create(pool, "bench", title="bench")
        poster_tokens = [(await tokens.mint(pool, room_id=room.id, role="viewer", ttl_seconds=3600))[0]
                         for _ in range(args.posters)]
        await pool.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ODS_", "DATABASE_URL", "REDIS_URL"))}
        env.update(DATABASE_URL=database_url, REDIS_URL=REDIS_URL, ODS_REDIS_PREFIX=prefix, ODS_HTTP_PORT="0",
                   ODS_SECRET_KEY="bench-secret-key-0123456789-abcdefghijklmnop", ODS_LOG_LEVEL="warning",
                   ODS_DATA_DIR=str(Path("/tmp") / dbname), ODS_CHAT_RATE_PER_10S="100000",
                   ODS_ICE_ADDRESSES="127.0.0.1", PYTHONUNBUFFERED="1")
        ports = []
        for name in ("A", "B"):
            proc, port = start_server(name, env)
            procs.append(proc)
            ports.append(port)
        loop = asyncio.get_running_loop()

        # Readers in their own processes (so their parsing does not delay the posters'
        # clock), half of them on each server, all joined before measuring.
        ctx = multiprocessing.get_context("spawn")
        t0 = time.monotonic()
        share = [args.clients // args.reader_procs + (1 if i < args.clients % args.reader_procs else 0)
                 for i in range(args.reader_procs)]
        first = 0
        for n in share:
            parent_end, child_end = ctx.Pipe()
            child = ctx.Process(target=reader_process, args=(ports, first, n, args.sample, child_end), daemon=True)
            child.start()
            children.append((child, parent_end))
            first += n

        async def recv(conn, timeout: float):
            if not await loop.run_in_executor(None, conn.poll, timeout):
                raise TimeoutError("reader process did not answer")
            return conn.recv()

        joined = sum([(await recv(c, 180))[1] for _, c in children])
        setup_s = time.monotonic() - t0

        async with aiohttp.ClientSession() as session:
            posters = []
            for i, token in enumerate(poster_tokens):
                ws = await session.ws_connect(f"http://127.0.0.1:{ports[i % 2]}/rooms/bench/chat")
                await ws.send_str(orjson.dumps({"type": "join", "token": token}).decode())
                while (await ws.receive_json())["type"] != "welcome":
                    pass
                posters.append(ws)
            ack_ms: list[float] = []
            errors: list[str] = []

            async def drain_acks(ws: aiohttp.ClientWebSocketResponse) -> None:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    if msg.data.startswith('{"type":"error"'):
                        errors.append(msg.data)
                    elif msg.data.startswith('{"type":"ack"'):
                        ack_ms.append((time.monotonic_ns() - int(orjson.loads(msg.data)["ref"])) / 1e6)

            drains = [asyncio.create_task(drain_acks(ws)) for ws in posters]
            server_ps = [psutil.Process(p.pid) for p in procs]
            gen_ps = [psutil.Process()] + [psutil.Process(c.pid) for c, _ in children]
            await asyncio.sleep(1.0)  # let the joins settle

            async def total_items() -> int:
                for _, c in children:
                    c.send("count")
                return sum([await recv(c, 30) for _, c in children])

            items_before = await total_items()
            cpu0 = [p.cpu_times() for p in server_ps]
            gen0 = [p.cpu_times() for p in gen_ps]
            for _, c in children:
                c.send("measure")
            start = time.monotonic()
            sent = 0
            interval = 1.0 / args.rate
            filler = "x" * max(0, args.size - 30)
            while True:
                due = start + sent * interval
                now = time.monotonic()
                if now - start >= args.duration:
                    break
                if due > now:
                    await asyncio.sleep(due - now)
                ws = posters[sent % len(posters)]
                stamp = time.monotonic_ns()
                await ws.send_str(orjson.dumps({"type": "post", "text": f"@{stamp}@ {filler}",
                                                "ref": str(stamp)}).decode())
                sent += 1
            elapsed_send = time.monotonic() - start
            expected = sent * joined
            deadline = time.monotonic() + 15
            delivered = await total_items() - items_before
            while delivered < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                delivered = await total_items() - items_before
            window = time.monotonic() - start
            cpu1 = [p.cpu_times() for p in server_ps]
            gen1 = [p.cpu_times() for p in gen_ps]
            latencies: list[int] = []
            for _, c in children:
                c.send("stop")
                latencies += (await recv(c, 60))[1]
            for task in drains:
                task.cancel()
            for ws in posters:
                await ws.close()

        lat_ms = sorted(x / 1e6 for x in latencies)
        acks = sorted(ack_ms)

        def pct(values: list[float], p: float) -> float:
            return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")

        def cpu(a, b) -> float:
            return (b.user + b.system - a.user - a.system) / window * 100

        print(f"clients {joined} in {len(children)} reader processes (setup {setup_s:.1f} s), "
              f"posters {len(posters)}, {sent} messages in {elapsed_send:.1f} s ({sent / elapsed_send:.1f} msg/s in), "
              f"{len(errors)} post errors; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        print()
        print("| metric | value |")
        print("|---|---|")
        print(f"| delivered items/s (all readers, until the last arrived) | {delivered / window:,.0f} |")
        print(f"| deliveries expected / missing | {expected:,} / {expected - delivered:,} |")
        print(f"| delivery latency p50 / p99 / max (ms) | {pct(lat_ms, 0.5):.1f} / {pct(lat_ms, 0.99):.1f} / "
              f"{lat_ms[-1] if lat_ms else 0:.1f} |")
        print(f"| post ack p50 / p99 (ms) | {pct(acks, 0.5):.1f} / {pct(acks, 0.99):.1f} |")
        for name, a, b in zip("AB", cpu0, cpu1):
            print(f"| CPU server {name} (% of one core) | {cpu(a, b):.0f} |")
        print(f"| CPU servers total (% of one core) | {sum(cpu(a, b) for a, b in zip(cpu0, cpu1)):.0f} |")
        print(f"| CPU load generator, all processes (% of one core) | {sum(cpu(a, b) for a, b in zip(gen0, gen1)):.0f} |")
        if errors:
            print("first post error:", errors[0][:200])
    finally:
        for child, conn in children:
            child.join(5)
            if child.is_alive():
                child.kill()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await admin.close()
        import redis.asyncio as redis

        client = redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000, help="reading clients (split over two servers)")
    parser.add_argument("--posters", type=int, default=10, help="posting clients (split over two servers)")
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second in, all posters together")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of posting")
    parser.add_argument("--size", type=int, default=80, help="approximate message text length")
    parser.add_argument("--reader-procs", type=int, default=2, help="processes holding the readers")
    parser.add_argument("--sample", type=int, default=10,
                        help="every Nth reader records latencies (all count deliveries)")
    args = parser.parse_args()
    if not (1 <= args.clients <= 5000 and 1 <= args.posters <= 200 and 0 < args.rate <= 2000
            and 0 < args.duration <= 300 and 1 <= args.reader_procs <= min(16, args.clients) and args.sample >= 1):
        parser.error("out of bounds: clients 1-5000, posters 1-200, rate (0, 2000], duration (0, 300], "
                     "reader-procs 1-16 (<= clients), sample >= 1")
    try:
        import uvloop
        uvloop.run(run(args))
    except ImportError:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
