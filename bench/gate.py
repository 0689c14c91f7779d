"""Join-gate latency at a steady request rate, measured inside the server.

    .venv/bin/python bench/gate.py [--rate 300] [--duration 10]

Creates a throwaway database (dropped at the end) on the local PostgreSQL,
uses the local Redis under a throwaway prefix, starts the full app on a
loopback port with one extra route that times ``Gate.admit`` server-side,
in a child process (so the load generator does not share its CPU or event
loop), and drives it open-loop (requests are sent on schedule whether or not
earlier ones have finished, so queueing shows up in the numbers).

Scenarios: an entitled subscriber joining a plan room (session cookie +
entitlement cache), an anonymous viewer joining a public room, and an OBS
bearer token publishing.  Prints p50/p99/max server-side and client-side
latencies per scenario.  Target (issue 7): server-side p99 <= 10 ms.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
import redis.asyncio as redis  # noqa: E402
from aiohttp import web  # noqa: E402

from odsmedia import config as configmod  # noqa: E402
from odsmedia.app import make_app  # noqa: E402
from odsmedia.auth import sessions, tokens  # noqa: E402
from odsmedia.errors import ApiError, json_response  # noqa: E402
from odsmedia.gate import Entry  # noqa: E402
from odsmedia.keys import GATE  # noqa: E402
from odsmedia.rooms import directory  # noqa: E402
from odsmedia.storage import migrate  # noqa: E402

SERVER_TIMES = web.AppKey("bench_server_times", dict)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def bench_route(app: web.Application) -> None:
    app[SERVER_TIMES] = {}

    async def admit(request: web.Request) -> web.Response:
        entry = Entry(request.query.get("entry", "join"))
        started = time.perf_counter()
        try:
            await request.app[GATE].admit(request, request.match_info["slug"], entry)
            status = 200
        except ApiError as exc:
            status = exc.status
        elapsed = time.perf_counter() - started
        request.app[SERVER_TIMES].setdefault(request.query.get("scenario", ""), []).append(elapsed)
        return json_response({"status": status}, status=status)

    app.router.add_get("/bench/admit/{slug}", admit)


async def drive(session: aiohttp.ClientSession, url: str, rate: float, duration: float,
                headers: dict[str, str]) -> tuple[list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one() -> None:
        started = time.perf_counter()
        async with session.get(url, headers=headers) as resp:
            await resp.read()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
        latencies.append(time.perf_counter() - started)

    total = int(rate * duration)
    t0 = time.perf_counter()
    tasks = []
    for i in range(total):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration + 30)
    return latencies, statuses


async def prepare(database_url: str) -> tuple[str, str]:
    """Account with an active subscription, a plan room and a public room; returns (cookie, bearer)."""
    await migrate(database_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        account_id = await pool.fetchval(
            "INSERT INTO accounts (email, age_confirmed_at) VALUES ('bench@example.test', now()) RETURNING id")
        session_token, _ = await sessions.create(pool, account_id, absolute_seconds=86400, region="loopback")
        await pool.execute("INSERT INTO billing_customers (customer_id, account_id) VALUES ('cus_bench', $1)",
                           account_id)
        await pool.execute(
            """INSERT INTO subscriptions (subscription_id, customer_id, plan, price_id, status, state_at)
               VALUES ('sub_bench', 'cus_bench', 'pro', 'price_pro', 'active', now())""")
        paid = await directory.create(pool, "bench-paid", policy="plans", plans=("pro",))
        await directory.create(pool, "bench-public", policy="public")
        host_token, _ = await tokens.mint(pool, room_id=paid.id, role="host", ttl_seconds=3600)
    finally:
        await pool.close()
    return session_token, host_token


async def serve(args: argparse.Namespace) -> None:
    """Child process: the app plus the timing route; prints its port, runs until stdin closes."""
    config = configmod.load(environ={
        "DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url, "ODS_REDIS_PREFIX": args.prefix,
        "ODS_DATA_DIR": args.data_dir, "ODS_SECRET_KEY": "bench-secret-key-0123456789-abcdefghijkl",
        "ODS_HTTP_PORT": "0", "ODS_CONFIG": args.plans, "ODS_LOG_LEVEL": "warning",
    }, dev=True)
    app = make_app(config)
    bench_route(app)

    async def stats(request: web.Request) -> web.Response:
        name = request.query["scenario"]
        return json_response(request.app[SERVER_TIMES].pop(name, []))

    app.router.add_get("/bench/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


async def main(args: argparse.Namespace) -> None:
    run = uuid.uuid4().hex[:8]
    dbname = f"ods_bench_{run}"
    admin = await asyncpg.connect(args.admin_dsn)
    await admin.execute(f'CREATE DATABASE "{dbname}"')
    await admin.close()
    database_url = args.admin_dsn.rsplit("/", 1)[0] + "/" + dbname
    prefix = f"odsbench:{run}:"
    tmp = Path(tempfile.mkdtemp(prefix="ods-bench-"))
    child = None
    try:
        session_token, host_token = await prepare(database_url)
        plans = tmp / "plans.toml"
        plans.write_text('[plans.pro]\nprice = "price_pro"\nlabel = "Pro"\n')
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", "--database-url", database_url, "--redis-url", args.redis_url,
            "--prefix", prefix, "--data-dir", str(tmp / "data"), "--plans", str(plans),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        port = int((await asyncio.wait_for(child.stdout.readline(), 30)).decode())
        base = f"http://127.0.0.1:{port}"
        scenarios = [
            ("subscriber joins plan room", "/bench/admit/bench-paid?entry=join",
             {"Cookie": f"{sessions.COOKIE}={session_token}"}),
            ("anonymous joins public room", "/bench/admit/bench-public?entry=join", {}),
            ("OBS token publishes", "/bench/admit/bench-paid?entry=publish",
             {"Authorization": f"Bearer {host_token}"}),
        ]
        connector = aiohttp.TCPConnector(limit=200)
        print(f"rate {args.rate:.0f} req/s for {args.duration:.0f} s per scenario; cpu count {os.cpu_count()}; "
              f"load average {os.getloadavg()[0]:.2f}")
        print(f"{'scenario':30} {'n':>6} {'server p50':>11} {'p99':>8} {'max':>8} "
              f"{'client p50':>11} {'p99':>8}  statuses   (ms)")
        ms = lambda v: f"{v * 1000:8.2f}"  # noqa: E731
        async with aiohttp.ClientSession(connector=connector) as session:
            for name, path, headers in scenarios:
                await drive(session, f"{base}{path}&scenario=warmup", args.rate, 1.0, headers)
                client, statuses = await drive(session, f"{base}{path}&scenario={name}", args.rate,
                                               args.duration, headers)
                async with session.get(f"{base}/bench/stats", params={"scenario": name}) as resp:
                    server = await resp.json()
                print(f"{name:30} {len(server):6d} {ms(statistics.median(server)):>11} {ms(pct(server, 99))} "
                      f"{ms(max(server))} {ms(statistics.median(client)):>11} {ms(pct(client, 99))}  {statuses}")
    finally:
        if child is not None:
            child.stdin.close()
            try:
                await asyncio.wait_for(child.wait(), 15)
            except asyncio.TimeoutError:
                child.kill()
        admin = await asyncpg.connect(args.admin_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await admin.close()
        client = redis.from_url(args.redis_url)
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--admin-dsn", default=os.environ.get("ODS_BENCH_ADMIN_DSN",
                                                              "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--redis-url", default=os.environ.get("ODS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--database-url", "--prefix", "--data-dir", "--plans"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    asyncio.run(serve(parsed) if parsed.serve else main(parsed))
