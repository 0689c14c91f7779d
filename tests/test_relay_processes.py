"""Relays across real processes: three `odsmedia serve` nodes on loopback, SIGKILLed ones included.

Origin A holds the publisher and a viewer; B and C serve viewers as relays
of A, and every viewer decodes every frame.  B is
SIGKILLed: its viewer's socket drops, it joins again on C (what a page does
when its socket closes) and plays again within 10 s, while C's own viewer
never misses a frame.  Then A, the origin, is SIGKILLed: C notices (its
pipes stall and A answers nothing), its viewers are told the room moved.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

from conftest import ODSMEDIA, odsmedia_env
from odsmedia.rooms.relay import CLOSE_MOVED
from test_sfu_packet_path import assert_consecutive, wait_for
from testsupport.peers import Publisher, SignalingClient, Viewer

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parent.parent


class Node:
    def __init__(self, service_urls, data_dir: Path) -> None:
        self.port = unused_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = odsmedia_env(service_urls, data_dir, ODS_HTTP_PORT=str(self.port), ODS_PUBLIC_URL=self.url,
                           ODS_LOG_FORMAT="text", ODS_ROOMS_RELAY_THRESHOLD="0", ODS_RELAY_STALL_SECONDS="1",
                           ODS_RECORDING_ENABLED="false")
        self.log = open(data_dir.parent / f"{data_dir.name}.log", "wb")
        self.proc = subprocess.Popen([*ODSMEDIA, "serve"], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=REPO)

    async def ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, f"node {self.url} exited"
            try:
                async with session.get(self.url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"node {self.url} did not come up"
            await asyncio.sleep(0.2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


async def test_relay_and_origin_killed(service_urls, tmp_path, room_factory, token_factory):
    nodes = [Node(service_urls, tmp_path / name) for name in ("a", "b", "c")]
    a, b, c = nodes
    closers = []
    try:
        async with aiohttp.ClientSession() as session:
            for node in nodes:
                await node.ready(session)
            room = await room_factory()

            async def viewer(node: Node, name: str) -> Viewer:
                client = SignalingClient(node.url, room.slug)
                closers.append(client.close)
                await client.connect()
                await client.join(name=name)
                v = Viewer(client)
                closers.append(v.close)
                await v.subscribe()
                return v

            host = SignalingClient(a.url, room.slug)
            closers.append(host.close)
            await host.connect()
            await host.join(await token_factory(room, "host"))
            publisher = Publisher(host)
            closers.append(publisher.close)
            await publisher.publish(fps=15, audio=False)

            on_a, on_b, on_c = await viewer(a, "on a"), await viewer(b, "on b"), await viewer(c, "on c")
            await wait_for(lambda: all(v.video() and len(v.video().counters) >= 15 for v in (on_a, on_b, on_c)),
                           60, "15 frames on every node")
            for v in (on_a, on_b, on_c):
                assert_consecutive(v.video().counters)

            b.kill()
            killed_at = time.monotonic()
            await asyncio.wait_for(on_b.client.closed.wait(), 10)       # the page sees its socket go
            again = await viewer(c, "on b, again on c")
            await wait_for(lambda: again.video() is not None and again.video().counters, 30, "replay on c")
            # The timing is the feature: a relay's death costs its viewers only a reconnect.
            assert time.monotonic() - killed_at < 10
            before = len(on_c.video().counters)
            await wait_for(lambda: len(on_c.video().counters) - before >= 15, 30, "c goes on")
            assert_consecutive(on_c.video().counters)                    # C's viewer never noticed

            a.kill()
            moved = await on_c.client.next_event("error", timeout=20)
            assert moved["code"] == "room_moved"
            await asyncio.wait_for(on_c.client.closed.wait(), 10)
            assert on_c.client.ws.close_code == CLOSE_MOVED
    finally:
        for close in reversed(closers):
            try:
                await close()
            except Exception:
                pass
        for node in nodes:
            node.stop()
