"""``odsmedia serve --workers N``: N media processes behind one HTTP port.

A room lives on one node and a node was one process, so one core capped a
room's audience. Here the process the operator starts is a supervisor: it
binds the shared HTTP socket and one private socket per worker, then starts N
worker processes (``python -m odsmedia.workers``) that inherit those sockets
and run the whole application, each as a node of its own in the placement
registry: its own node id (``node-id-worker<i>`` in the data dir), its own
node URL (its private port, where ``room_on_other_node`` sends clients), its
own ICE/UDP port (``media.udp_port`` + i).

Why hand sockets over rather than SO_REUSEPORT (docs/operations.md): one
accept queue shared by every worker, so a worker that dies strands no
connection in a queue of its own; port 0 and the bind errors are the
supervisor's, once; no other process of the same user can join the group.

The supervisor does what must happen once: migrations, the Redis check, the
embedded services of ``dev`` (before it starts). It hands each worker its
configuration down the worker's stdin and keeps that pipe open: a worker
whose supervisor is gone sees end-of-file and stops. It restarts a worker
that exits unasked (backoff), after removing the dead worker's node from the
registry so that its rooms can be taken over at once; SIGTERM/SIGINT are
forwarded for a clean stop (rooms closed, episodes finalized) and the
supervisor waits for every worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from .bus import Bus
from .config import Config
from .rooms.placement import forget

log = logging.getLogger("odsmedia.workers")

READY_TIMEOUT = 120.0       # a worker imports aiortc and PyAV and opens its pools: slow on a busy machine
STOP_TIMEOUT = 30.0         # the app's shutdown (10 s) plus closing the recorder's episodes
RESTART_BACKOFF = (0.5, 10.0)
STEADY_SECONDS = 30.0       # a worker that ran this long restarts without waiting again


class WorkerFailed(Exception):
    """A worker exited before it was ready the first time: the configuration or environment is wrong."""


def default_count() -> int:
    return os.cpu_count() or 1


def node_url(config: Config, port: int) -> str:
    """The URL of the worker listening on private ``port``: http.node_url with {port}, else
    http.public_url's scheme and host with that port, else http.host."""
    template = config["http.node_url"]
    if template:
        return template.replace("{port}", str(port)).rstrip("/")
    public = config["http.public_url"]
    if public:
        parts = urlsplit(public)
        return f"{parts.scheme}://{parts.hostname}:{port}"
    return f"http://{config['http.host']}:{port}"


@dataclass
class WorkerSpec:
    """What one worker is given, the same at every restart."""

    index: int
    private: socket.socket
    config: Config

    @property
    def url(self) -> str:
        return self.config["http.node_url"]


def specs(config: Config, privates: list[socket.socket]) -> list[WorkerSpec]:
    udp = config["media.udp_port"]
    out = []
    for index, private in enumerate(privates):
        changes = {"http.node_url": node_url(config, private.getsockname()[1])}
        if udp:
            changes["media.udp_port"] = str(udp + index)
        out.append(WorkerSpec(index, private, config.replace(**changes)))
    return out


class Worker:
    """One worker process as the supervisor sees it."""

    def __init__(self, spec: WorkerSpec, shared: socket.socket) -> None:
        self.spec = spec
        self.shared = shared
        self.process: asyncio.subprocess.Process | None = None
        self.node_id = ""
        self.ready = asyncio.Event()
        self.started = 0.0
        self.restarts = 0

    async def start(self) -> None:
        self.ready = asyncio.Event()
        self.started = time.monotonic()
        fds = (self.shared.fileno(), self.spec.private.fileno())
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "odsmedia.workers", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, pass_fds=fds)
        brief = {"index": self.spec.index, "fds": list(fds), "config": self.spec.config.snapshot()}
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(brief).encode() + b"\n")
        await self.process.stdin.drain()
        asyncio.ensure_future(self._read(self.process))

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        """The worker's stdout: its ready line, then anything it prints (passed on)."""
        assert process.stdout is not None
        async for line in process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if isinstance(message, dict) and message.get("ready") and process is self.process:
                self.node_id = str(message["node"])
                self.ready.set()
            else:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)


class Supervisor:
    def __init__(self, config: Config, shared: socket.socket, privates: list[socket.socket]) -> None:
        self.config = config
        self.shared = shared
        self.workers = [Worker(spec, shared) for spec in specs(config, privates)]
        self.stopping = asyncio.Event()

    async def run(self, announce: Callable[[int], None]) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        bus = Bus(self.config["redis.url"], self.config["redis.prefix"])
        try:
            await asyncio.gather(*(w.start() for w in self.workers))
            await self._first_ready()
            announce(self.shared.getsockname()[1])
            watchers = [asyncio.ensure_future(self._watch(w, bus)) for w in self.workers]
            await self.stopping.wait()
            await self._stop()
            for watcher in watchers:
                watcher.cancel()
        finally:
            for worker in self.workers:
                worker.signal(signal.SIGKILL)
            await bus.close()

    async def _first_ready(self) -> None:
        async def ready(worker: Worker) -> None:
            assert worker.process is not None
            exited = asyncio.ensure_future(worker.process.wait())
            up = asyncio.ensure_future(worker.ready.wait())
            done, _ = await asyncio.wait({exited, up}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            exited.cancel()
            up.cancel()
            if up not in done:
                why = (f"exited with status {worker.process.returncode}" if worker.process.returncode is not None
                       else f"was not ready within {READY_TIMEOUT:.0f} s")
                raise WorkerFailed(f"worker {worker.spec.index} {why} (its log is above)")

        waiting = asyncio.ensure_future(asyncio.gather(*(ready(w) for w in self.workers)))
        stop = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({waiting, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not waiting.done():
            waiting.cancel()
            return
        waiting.result()

    async def _watch(self, worker: Worker, bus: Bus) -> None:
        """Restart ``worker`` whenever it exits unasked."""
        delay = RESTART_BACKOFF[0]
        while not self.stopping.is_set():
            assert worker.process is not None
            status = await worker.process.wait()
            if self.stopping.is_set():
                return
            log.warning("worker exited; restarting it",
                        extra={"worker": worker.spec.index, "status": status, "node": worker.node_id})
            if worker.node_id:
                try:
                    await forget(bus, worker.node_id)
                except Exception as exc:       # Redis away: its registration expires by itself
                    log.warning("cannot unregister the dead worker's node (REDIS_URL)",
                                extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
            if time.monotonic() - worker.started >= STEADY_SECONDS:
                delay = RESTART_BACKOFF[0]
            await asyncio.sleep(delay)
            delay = min(RESTART_BACKOFF[1], delay * 2)
            if self.stopping.is_set():
                return
            worker.restarts += 1
            await worker.start()

    async def _stop(self) -> None:
        """SIGTERM to every worker, then wait; SIGKILL those still running after STOP_TIMEOUT."""
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        waits = [w.process.wait() for w in self.workers if w.process is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("workers did not stop in time; killing them")


# --- the worker process ----------------------------------------------------------------------

def main() -> int:
    """A worker: read the brief from stdin, serve on the inherited sockets until told to stop."""
    from . import logs, node
    from .cli import _serve, run_async

    brief = json.loads(sys.stdin.buffer.readline())
    config = Config.restore(brief["config"])
    node.worker_index = int(brief["index"])
    logs.setup(config["log.level"], "text" if config["log.format"] == "text" else "json")
    listeners = [socket.socket(fileno=fd) for fd in brief["fds"]]

    async def serve() -> None:
        stop = asyncio.Event()
        # The supervisor keeps our stdin open: end-of-file means it is gone, so stop too.
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def parent_gone() -> None:
            await reader.read()
            stop.set()

        watcher = asyncio.ensure_future(parent_gone())

        def announce(port: int) -> None:
            print(json.dumps({"ready": True, "node": node.issued,
                              "port": port, "url": config["http.node_url"]}), flush=True)

        try:
            await _serve(config, announce, listeners=listeners, prepare=False, stop=stop)
        finally:
            watcher.cancel()

    run_async(serve())
    return 0


if __name__ == "__main__":  # pragma: no cover - run by the supervisor
    sys.exit(main())
