"""Per-node fan-out: the chat clients connected to this process, per room.

Each room with local clients has one ``RoomChannel`` subscribed to the bus
channel ``room:{slug}:chat``.  Sequenced events (``seq``) are delivered to
local clients strictly in seq order, each exactly once: duplicates (the
poster's node sees its own event twice, locally and from Redis) are dropped,
and a gap (Redis reordered or lost a message, or restarted) is filled from
Postgres after a short wait.  Postgres is the system of record, Redis only
makes delivery fast.

Sending does not queue per client on the hot path: each event is encoded
once as a WebSocket frame (server frames are unmasked, so the bytes are the
same for everyone) and written straight to each client's transport; a busy
room coalesces the events of a short, self-tuning interval into one write
per client.  A
client whose socket buffer fills gets a backlog drained by its own task,
and one whose backlog passes MAX_BACKLOG_BYTES is disconnected with
``too_slow`` and resumes from its last seq when it reconnects, losing
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from typing import Any, Callable

import asyncpg
import orjson
from aiohttp import web

from ..bus import Bus
from ..channels import chat_channel, control_channel
from ..reauth import CLOSE_ENTITLEMENT_ENDED
from . import store

log = logging.getLogger("odsmedia.chat")

# How long an out-of-order event waits for the ones before it to arrive from
# Redis before the gap is read from Postgres.
GAP_WAIT = 0.15
# Every RECONCILE_INTERVAL the rooms' sequence heads are read from Postgres; a
# room still behind a head seen one interval earlier catches up (lost messages).
RECONCILE_INTERVAL = 1.0
# A socket with more than this many bytes unsent is served by its own writer.
FAST_PATH_BYTES = 32 * 1024
# Bytes a client may have queued behind its full socket before it is dropped.
MAX_BACKLOG_BYTES = 1024 * 1024
# A room writes to its clients at most once per flush interval: a quiet room
# writes each event at once, a busy one coalesces the events of the interval
# into one write (one syscall) per client. The interval adapts to the room:
# FLUSH_COST_FACTOR times what the last flush took (a big room's flush costs
# more, so it coalesces more and the loop keeps time for everything else),
# within FLUSH_MIN..FLUSH_MAX seconds.
FLUSH_MIN = 0.01
FLUSH_MAX = 0.1
FLUSH_COST_FACTOR = 4.0
DRAIN_POLL = 0.02

# Notice ids a room remembers to drop the copy of a notice that comes back from Redis.
NOTICE_MEMORY = 1024

CLOSE_KICKED = 4003
ENTITLEMENT_ENDED = "entitlement_ended"
CLOSE_TOO_SLOW = 4008
CLOSE_BANNED = 4403


def text_frame(text: str | bytes) -> bytes:
    """One unmasked, uncompressed WebSocket text frame (RFC 6455 5.2).

    A server's frames carry no mask, so the bytes of one event are the same for
    every client: a room encodes each event once and writes that frame to every
    socket, instead of asking aiohttp to build it a thousand times.
    """
    payload = text.encode() if isinstance(text, str) else text
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + payload


def event_frame(event: dict[str, Any]) -> bytes:
    return text_frame(orjson.dumps(event))


class ChatClient:
    """One chat WebSocket: its identity, role and delivery position.

    Every data frame to the client goes through ``write`` (events, acks and
    errors alike, so their order on the wire is the order they were produced);
    aiohttp writes only control frames (ping, pong, close), which are whole
    frames too, so the two never interleave inside a frame.
    """

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, *, subject: str, name: str,
                 role: str, can_post: bool, network: str | None = None) -> None:
        self.ws = ws
        self.transport = request.transport
        self.subject = subject
        self.name = name
        self.role = role
        self.can_post = can_post
        # The client network as a keyed hash, for the per-network post rate (never the address).
        self.network = network
        self.last_seq = 0
        self.ready = False
        self.closed = False
        self._pending: list[tuple[int, bytes]] = []
        self._backlog: deque[bytes] | None = None
        self._backlog_bytes = 0
        self._writer: asyncio.Task[None] | None = None

    @property
    def is_moderator(self) -> bool:
        return self.role in ("host", "moderator")

    def start(self, cursor: int) -> None:
        """The client has its snapshot up to ``cursor``: release what queued meanwhile."""
        self.last_seq = cursor
        self.ready = True
        pending, self._pending = self._pending, []
        for seq, frame in pending:
            self.deliver(seq, frame)

    def deliver(self, seq: int | None, frame: bytes) -> None:
        if self.closed:
            return
        if seq is not None:
            if not self.ready:
                self._pending.append((seq, frame))
                return
            if seq <= self.last_seq:
                return
            self.last_seq = seq
        self.write(frame)

    def send(self, event: dict[str, Any]) -> None:
        self.write(event_frame(event))

    def write(self, frame: bytes) -> None:
        if self.closed:
            return
        transport = self.transport
        if transport is None or transport.is_closing() or self.ws.closed:
            self.closed = True
            return
        if self._backlog is not None:
            self._backlog_bytes += len(frame)
            if self._backlog_bytes > MAX_BACKLOG_BYTES:
                self.close(CLOSE_TOO_SLOW, {"type": "error", "error": "too_slow",
                                            "message": "connection too slow; reconnect to resume"})
                return
            self._backlog.append(frame)
            return
        if transport.get_write_buffer_size() > FAST_PATH_BYTES:
            self._backlog = deque([frame])
            self._backlog_bytes = len(frame)
            self._writer = asyncio.get_running_loop().create_task(self._drain())
            return
        transport.write(frame)

    async def _drain(self) -> None:
        """Slow client: write the backlog as its socket buffer empties."""
        transport = self.transport
        while self._backlog and not self.closed:
            if transport is None or transport.is_closing():
                self.closed = True
                return
            if transport.get_write_buffer_size() > FAST_PATH_BYTES:
                await asyncio.sleep(DRAIN_POLL)
                continue
            while self._backlog and transport.get_write_buffer_size() <= FAST_PATH_BYTES:
                frame = self._backlog.popleft()
                self._backlog_bytes -= len(frame)
                transport.write(frame)
        self._backlog = None

    def close(self, code: int, event: dict[str, Any] | None = None) -> None:
        """Close from the hub (kick, ban, too slow); does not wait."""
        if self.closed:
            return
        if event is not None and self._backlog is None and self.transport is not None \
                and not self.transport.is_closing():
            self.transport.write(event_frame(event))
        self.closed = True
        asyncio.get_running_loop().create_task(self._close(code, (event or {}).get("error", "")))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code=code, message=reason.encode()[:120])
        except (ConnectionError, RuntimeError):
            pass


class RoomChannel:
    """This node's subscription to one room's chat and its local clients."""

    def __init__(self, hub: "ChatHub", slug: str, room_id: int) -> None:
        self.hub = hub
        self.slug = slug
        self.room_id = room_id
        self.clients: set[ChatClient] = set()
        self.delivered = 0
        # Slow mode as last heard (settings notices, refreshed by the reconcile loop),
        # so posting needs no extra query.
        self.slow_mode = 0
        self.opened = asyncio.Event()
        self.opening: asyncio.Future[None] | None = None
        self.suspect_head = 0
        self._pending: dict[int, dict[str, Any]] = {}
        # Ids of the notices delivered lately (bounded: a notice comes back within moments).
        self._notice_order: deque[str] = deque(maxlen=NOTICE_MEMORY)
        self._notices_seen: set[str] = set()
        self._gap_timer: asyncio.TimerHandle | None = None
        self._outbox: list[tuple[int, bytes]] = []
        self._flush_timer: asyncio.Handle | None = None
        self._last_flush = 0.0
        self._flush_interval = FLUSH_MIN
        self._catching_up = False
        self._unsubscribe: Callable[[], Any] | None = None
        self._unsubscribe_control: Callable[[], Any] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._unsubscribe = await self.hub.bus.subscribe(chat_channel(self.slug), self.handle)
        # Billing ends a plan room's access on the control channel (a ``kick`` with reason
        # entitlement_ended); chat applies it to its own sockets too.
        self._unsubscribe_control = await self.hub.bus.subscribe(control_channel(self.slug), self.on_control)
        # Read the head after subscribing: anything published before is at or below it.
        self.delivered, self.slow_mode = await store.room_state(self.hub.db, self.room_id)
        self.opened.set()

    async def close(self) -> None:
        if self._gap_timer is not None:
            self._gap_timer.cancel()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self._unsubscribe is not None:
            await self._unsubscribe()
        if self._unsubscribe_control is not None:
            await self._unsubscribe_control()
        for task in list(self._tasks):
            task.cancel()

    def on_control(self, message: dict[str, Any]) -> None:
        """A control message for the room: chat applies the end of a plan's access."""
        target = message.get("target")
        if message.get("action") != "kick" or message.get("reason") != ENTITLEMENT_ENDED \
                or not isinstance(target, str) or target == "none":
            return
        detail = message.get("detail") if isinstance(message.get("detail"), str) else ENTITLEMENT_ENDED
        for client in list(self.clients):
            if client.subject == target:
                client.close(CLOSE_ENTITLEMENT_ENDED, {"type": "error", "error": ENTITLEMENT_ENDED, "detail": detail,
                                                       "message": "your access to this room ended"})

    def handle(self, event: dict[str, Any]) -> None:
        """One event from the bus or from this node: deliver in seq order, once.

        Synchronous, so neither the poster's request nor the bus reader ever
        waits here (catch-up reads Postgres on its own task)."""
        if not self.opened.is_set():
            return  # at or below the head open() reads
        seq = event.get("seq")
        if seq is None:
            # Notices carry an id instead (``ChatHub.dispatch``): the producing node sees
            # each twice, locally and back from Redis, and delivers it once.
            notice_id = event.get("notice")
            if isinstance(notice_id, str):
                if notice_id in self._notices_seen:
                    return
                if len(self._notice_order) == self._notice_order.maxlen:
                    self._notices_seen.discard(self._notice_order[0])
                self._notice_order.append(notice_id)
                self._notices_seen.add(notice_id)
            self.hub.notice(self, event)
            return
        if seq <= self.delivered or seq in self._pending:
            return
        self._pending[seq] = event
        if not self._catching_up:
            self._drain_pending()

    def _drain_pending(self) -> None:
        """Emit the pending events that continue the sequence; wait a little for a gap."""
        while self.delivered + 1 in self._pending:
            self._emit(self._pending.pop(self.delivered + 1))
        if self._pending:
            if self._gap_timer is None:
                self._gap_timer = asyncio.get_running_loop().call_later(GAP_WAIT, self._spawn_catch_up)
        elif self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None

    def _emit(self, event: dict[str, Any]) -> None:
        seq = event["seq"]
        self.delivered = seq
        self._outbox.append((seq, event_frame(event)))
        if self._flush_timer is None:
            loop = asyncio.get_running_loop()
            delay = self._last_flush + self._flush_interval - loop.time()
            # Never inline: the caller (a poster's request, the bus reader) goes on
            # at once, and events emitted in the same loop turn share the flush.
            self._flush_timer = loop.call_soon(self._flush) if delay <= 0 else loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        """Write what the room emitted since the last flush: one write per client."""
        self._flush_timer = None
        frames, self._outbox = self._outbox, []
        started = time.perf_counter()
        if frames:
            first, last = frames[0][0], frames[-1][0]
            joined = frames[0][1] if len(frames) == 1 else b"".join(f for _, f in frames)
            for client in list(self.clients):
                if client.ready and client.last_seq < first:
                    client.last_seq = last
                    client.write(joined)
                else:  # joining (queues) or already ahead of part of it (dedupes)
                    for seq, frame in frames:
                        client.deliver(seq, frame)
        cost = time.perf_counter() - started
        self._flush_interval = min(FLUSH_MAX, max(FLUSH_MIN, FLUSH_COST_FACTOR * cost))
        self._last_flush = asyncio.get_running_loop().time()

    def _spawn_catch_up(self) -> None:
        self._gap_timer = None
        task = asyncio.get_running_loop().create_task(self.catch_up())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def catch_up(self) -> None:
        """Deliver from Postgres everything after what this node delivered."""
        if self._catching_up:
            return
        self._catching_up = True
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None
        # Every event pending now was committed before it was published, so the
        # rows read below hold it (in its latest state).
        covered = max(self._pending, default=0)
        try:
            # Events arriving meanwhile wait in _pending (handle() sees _catching_up).
            changes = await store.changes_after(self.hub.db, self.room_id, self.delivered)
        except (asyncpg.PostgresError, OSError, asyncio.TimeoutError):
            log.warning("chat catch-up failed", extra={"room": self.slug}, exc_info=True)
            changes = None
        finally:
            self._catching_up = False
        if changes is not None:
            for event in store.events_of(changes):
                if event["seq"] > self.delivered:
                    self._emit(event)
            self.delivered = max(self.delivered, covered)
            for seq in [s for s in self._pending if s <= self.delivered]:
                del self._pending[seq]
        self._drain_pending()


class ChatHub:
    def __init__(self, db: asyncpg.Pool, bus: Bus) -> None:
        self.db = db
        self.bus = bus
        self.rooms: dict[str, RoomChannel] = {}
        self._reconciler: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.bus.on_reconnect(self.catch_up_all)
        self._reconciler = asyncio.get_running_loop().create_task(self._reconcile_loop(), name="chat-reconcile")

    async def stop(self) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
            try:
                await self._reconciler
            except asyncio.CancelledError:
                pass
        for channel in list(self.rooms.values()):
            for client in list(channel.clients):
                client.close(1001, {"type": "error", "error": "shutting_down", "message": "server restarting"})
            await channel.close()
        self.rooms.clear()

    async def attach(self, slug: str, room_id: int, client: ChatClient) -> RoomChannel:
        channel = self.rooms.get(slug)
        if channel is None:
            channel = RoomChannel(self, slug, room_id)
            self.rooms[slug] = channel
            channel.clients.add(client)
            channel.opening = asyncio.get_running_loop().create_future()
            try:
                await channel.open()
            except BaseException as exc:
                if self.rooms.get(slug) is channel:
                    del self.rooms[slug]
                channel.opening.set_exception(ConnectionError(f"chat room {slug} could not open: {exc!r}"))
                channel.opening.exception()  # retrieved: joiners waiting on it get it too
                await channel.close()
                raise
            channel.opening.set_result(None)
        else:
            channel.clients.add(client)
            if channel.opening is not None and not channel.opening.done():
                try:
                    await asyncio.shield(channel.opening)
                except BaseException:
                    channel.clients.discard(client)
                    raise
        return channel

    async def detach(self, slug: str, client: ChatClient) -> None:
        channel = self.rooms.get(slug)
        if channel is None:
            return
        channel.clients.discard(client)
        if not channel.clients and channel.opened.is_set():
            del self.rooms[slug]
            await channel.close()

    async def dispatch(self, slug: str, event: dict[str, Any]) -> None:
        """Deliver an event this node produced to its local clients, then to the other nodes.

        An unsequenced event (a notice) gets a ``notice`` id here, so that every node,
        this one included, delivers it to each client once."""
        if event.get("seq") is None and "notice" not in event:
            event = {**event, "notice": secrets.token_hex(8)}
        channel = self.rooms.get(slug)
        if channel is not None:
            channel.handle(event)
        try:
            await self.bus.publish(chat_channel(slug), event)
        except Exception:
            # Persisted already: other nodes catch up from Postgres (reconcile, reconnect).
            log.warning("chat publish failed", extra={"room": slug}, exc_info=True)

    def notice(self, channel: RoomChannel, event: dict[str, Any]) -> None:
        """Unsequenced events: settings, sanctions, kicks, role changes."""
        kind = event.get("type")
        target = event.get("target")
        frame = event_frame(event)
        if kind == "settings" and isinstance(event.get("slow_mode"), int):
            channel.slow_mode = event["slow_mode"]
        if kind in ("kicked", "banned"):
            for client in list(channel.clients):
                if client.subject == target:
                    client.close(CLOSE_BANNED if kind == "banned" else CLOSE_KICKED, event)
        elif kind == "role":
            for client in list(channel.clients):
                if client.subject == target:
                    client.role = event["role"]
                    client.can_post = client.can_post or client.is_moderator
                    client.send({"type": "you", **you(client)})
        if kind != "role":
            for client in list(channel.clients):
                if client.ready:
                    client.write(frame)

    async def catch_up_all(self) -> None:
        await asyncio.gather(*(c.catch_up() for c in list(self.rooms.values()) if c.opened.is_set()))

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL)
            channels = [c for c in self.rooms.values() if c.opened.is_set()]
            if not channels:
                continue
            try:
                states = await store.room_states(self.db, {c.room_id for c in channels})
            except (asyncpg.PostgresError, OSError, asyncio.TimeoutError):
                continue
            for channel in channels:
                if channel.delivered < channel.suspect_head:
                    await channel.catch_up()
                channel.suspect_head, channel.slow_mode = states.get(channel.room_id, (0, 0))


def you(client: ChatClient) -> dict[str, Any]:
    return {"subject": client.subject, "name": client.name, "role": client.role, "can_post": client.can_post}
