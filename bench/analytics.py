"""What audience analytics costs: the sink calls features make, and the 10 s write.

    .venv/bin/python bench/analytics.py [--rooms 200] [--viewers 50] [--ticks 6]

Creates a throwaway database on the local PostgreSQL (dropped at the end).
Part 1 times the calls other features make on their paths (a viewer joining
and leaving, a chat item, a search), each a bounded loop in this process,
with the request-facts stand-in the sink reads (headers and the peer
address); the baseline is an empty Python call in the same loop.  Part 2
opens ROOMS x VIEWERS live views (each room with a live episode), then runs
TICKS sampling rounds, each after a burst of chat counted in between
(100 items per room), and reports the in-memory sample time and the
Postgres write time per round (first round: every visitor hash is new).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402

from odsmedia.analytics.events import AudienceRecorder  # noqa: E402
from odsmedia.analytics.visitors import Viewer  # noqa: E402
from odsmedia.storage import connect, migrate  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"


class Request:
    def __init__(self) -> None:
        self.headers = {"User-Agent": CHROME}
        self.remote = "127.0.0.1"


def per_call_us(fn, count: int) -> float:
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(count):
            fn()
        runs.append((time.perf_counter() - started) / count * 1e6)
    return statistics.median(runs)


async def main(args: argparse.Namespace) -> None:
    name = f"ods_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        await migrate(dsn)
        db = await connect(dsn, max_size=4)
        rooms = [await db.fetchval("INSERT INTO rooms (slug, title) VALUES ($1, 'bench') RETURNING id", f"r{i}")
                 for i in range(args.rooms)]
        for room in rooms:
            await db.execute("INSERT INTO episodes (room_id, storage_key) VALUES ($1, 'k')", room)
        recorder = AudienceRecorder(db, node="bench", live_rooms=lambda: rooms)
        request = Request()

        def noop() -> None:
            pass

        def join_leave() -> None:
            view = recorder.live_view(request, rooms[0], "v:x", "viewer", "webrtc")
            view.start()
            view.end()

        def chat() -> None:
            recorder.chat_item(request, rooms[0], "message")

        def search() -> None:
            recorder.search(request, rooms[0])

        print("part 1: calls on feature paths (median of 5 runs)")
        print(f"{'call':<28}{'us/call':>10}")
        for label, fn in (("empty call (baseline)", noop), ("viewer join + leave", join_leave),
                          ("chat item", chat), ("search", search)):
            print(f"{label:<28}{per_call_us(fn, args.calls):>10.2f}")
        recorder.ended.clear()
        await recorder.flush()

        views = [recorder.start_view(room, Viewer("GB", "chrome", f"v:{room}:{n}"), "webrtc")
                 for room in rooms for n in range(args.viewers)]
        print(f"\npart 2: {len(views)} open views in {len(rooms)} rooms, {args.ticks} rounds")
        print(f"{'round':<8}{'sample ms':>12}{'write ms':>12}")
        samples, writes = [], []
        for round_no in range(args.ticks):
            for room in rooms:
                for _ in range(100):
                    recorder.chat_item(request, room, "message")
            started = time.perf_counter()
            recorder.sample(10.0)
            sampled = time.perf_counter()
            await recorder.register_episodes()
            await recorder.flush()
            done = time.perf_counter()
            samples.append((sampled - started) * 1e3)
            writes.append((done - sampled) * 1e3)
            print(f"{round_no + 1:<8}{samples[-1]:>12.1f}{writes[-1]:>12.1f}")
        print(f"median (rounds 2+): sample {statistics.median(samples[1:] or samples):.1f} ms, "
              f"write {statistics.median(writes[1:] or writes):.1f} ms")
        for view in views:
            view.end()
        await db.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--viewers", type=int, default=50, help="open views per room")
    parser.add_argument("--ticks", type=int, default=6)
    parser.add_argument("--calls", type=int, default=20000, help="calls per timed run in part 1")
    args = parser.parse_args()
    if not (1 <= args.rooms <= 2000 and 0 <= args.viewers <= 500 and 1 <= args.ticks <= 30):
        parser.error("bounded: rooms 1-2000, viewers 0-500, ticks 1-30")
    asyncio.run(main(args))
