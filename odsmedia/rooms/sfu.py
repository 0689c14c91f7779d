"""The SFU of this node: its live rooms, observers and moderation channel.

``app[SFU]`` holds one ``Sfu``.  A room is live here while it
has participants; while live, the node listens on the bus channel
``room:{slug}:control`` so moderation issued on any node reaches the media.
Observers (the recorder) get sync callbacks when publications come and go.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

from aiohttp import web

from ..channels import control_channel
from .errors import on_other_node
from .participant import Participant, Writer
from .placement import Placement, RoomOnOtherNode
from .relay import RelayHub, RelayRoom
from .placement_policy import Where
from .room import Room
from .transport import CONNECT_TIMEOUT

if TYPE_CHECKING:
    from ..bus import Bus
    from ..config import Config
    from .directory import RoomRecord
    from .publication import Publication
    from .transport import Transport

log = logging.getLogger("odsmedia.sfu")


class Observer(Protocol):
    def on_publication_added(self, room: Room, publication: "Publication") -> None: ...

    def on_publication_removed(self, room: Room, publication: "Publication") -> None: ...


class Sfu:
    def __init__(self, config: "Config", bus: "Bus | None" = None) -> None:
        self.config = config
        self.bus = bus
        self.rooms: dict[str, Room] = {}
        self.observers: list[Observer] = []
        # Set with the bus: which node hosts each room (None: single node, no Redis).
        self.placement: Placement | None = None
        # Set with the bus: this node's relay control (rooms.relay), as a source and as a relay.
        self.relays: "RelayHub | None" = None
        self._audience_dirty: set[str] = set()
        self._audience_flush: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Seconds a transport may take to connect before it is released.
        self.connect_timeout = CONNECT_TIMEOUT
        # Moderator mutes of rooms that emptied (slug -> (when, mutes)): a host alone in the room
        # who reconnects within the session's grace (the recorder's: same episode) is still muted.
        self._held_mutes: dict[str, tuple[float, set[tuple[str, str]]]] = {}

    def add_observer(self, observer: Observer) -> None:
        self.observers.append(observer)

    def remove_observer(self, observer: Observer) -> None:
        if observer in self.observers:
            self.observers.remove(observer)

    async def enter(self, record: "RoomRecord", participant: "Participant") -> Room:
        """Join ``participant`` to the live room, created (and its control channel joined) on first use."""
        async with self._lock:
            room = self.rooms.get(record.slug)
            if isinstance(room, RelayRoom) and (participant.role == "host" or room.ended):
                raise on_other_node(room.origin_url)            # publishers go to the origin; an ending relay takes no one
            if room is None:
                room = await self._open(record, participant)
                held = self._held_mutes.pop(record.slug, None)
                if held is not None and time.monotonic() - held[0] <= self.config["recording.reconnect_grace"]:
                    room.moderator_mutes = held[1]
                self.rooms[record.slug] = room
                if self.bus is not None:
                    async def on_control(message: dict[str, Any], room: Room = room) -> None:
                        await room.apply_control(message)

                    room.unsubscribe_control = await self.bus.subscribe(control_channel(record.slug), on_control)
            # Joined under the lock, so a room emptying concurrently is never joined after removal.
            room.join(participant)
            return room

    async def _open(self, record: "RoomRecord", participant: Participant) -> Room:
        """The room goes live here: as its origin (the claim is ours), or as a relay of the node
        that has it, or not at all (room_on_other_node), as placement (rooms.placement_policy) says."""
        if self.placement is None:
            return Room(self, record)
        try:
            placed = await self.placement.place(record.slug, participant.role, relays=self.relays is not None)
            if placed.where is Where.REDIRECT and placed.node is not None:
                raise on_other_node(placed.node.url)
            if placed.where is Where.ORIGIN:
                await self.placement.claim(record.slug)
                return Room(self, record)
            assert placed.node is not None
            other = RoomOnOtherNode(placed.node.node_id, placed.node.url)
        except RoomOnOtherNode as taken:       # claimed by another node meanwhile: its origin
            other = taken
            placed = None
        source = self.placement.relay_source(other, participant.role) if self.relays is not None else None
        if source is None or (placed is None and other.viewers < self.placement.relay_threshold):
            raise on_other_node(other.url) from None
        assert self.relays is not None
        room = RelayRoom(self, record, hub=self.relays, source=source, origin_url=other.url)
        await room.start()
        return room

    def audience_changed(self, room: Room) -> None:
        """An origin room's viewer count goes to the registry (coalesced), for other nodes' placement."""
        if self.placement is None or isinstance(room, RelayRoom):
            return
        self._audience_dirty.add(room.slug)
        if self._audience_flush is None or self._audience_flush.done():
            self._audience_flush = asyncio.ensure_future(self._flush_audience())

    async def _flush_audience(self) -> None:
        while self._audience_dirty and self.placement is not None:
            slug = self._audience_dirty.pop()
            room = self.rooms.get(slug)
            try:
                await self.placement.publish_viewers(slug, room.viewers() if room is not None else 0)
            except Exception:
                log.warning("room viewer count not published; the claim refresh publishes it")

    def get(self, slug: str) -> Room | None:
        return self.rooms.get(slug)

    def load(self) -> tuple[int, int]:
        """Rooms live here and their viewers (participants that are not hosts): the node's load."""
        viewers = sum(p.role != "host" for room in self.rooms.values() for p in room.participants.values())
        return len(self.rooms), viewers

    # --- what the edges (signaling socket, WHIP, WHEP) use -----------------------------------

    async def join(self, record: "RoomRecord", *, subject: str, name: str | None, role: str, via: str,
                   write: "Writer | None" = None,
                   close_socket: "Callable[[int], None] | None" = None,
                   on_leave: "Callable[[], None] | None" = None) -> tuple[Room, "Participant"]:
        """A new participant, complete (its event writer attached, its socket closer set, what
        to do when it leaves), joined to the live room.  The caller has admitted ``subject``
        through the gate with ``role``."""
        participant = Participant(subject, name, role, via=via, close_socket=close_socket, on_leave=on_leave)
        if write is not None:
            participant.attach(write)
        try:
            room = await self.enter(record, participant)
        except BaseException:
            participant.stop()
            raise
        return room, participant

    def find_session(self, slug: str, transport_id: str, via: str) -> "tuple[Room, Participant, Transport] | None":
        """The WHIP or WHEP session (one participant, one transport) behind a resource URL."""
        room = self.rooms.get(slug)
        if room is not None:
            for participant in room.participants.values():
                transport = participant.transports.get(transport_id)
                if transport is not None and participant.via == via:
                    return room, participant, transport
        return None

    async def room_empty(self, room: Room) -> None:
        if self.rooms.get(room.slug) is room and not room.participants:
            del self.rooms[room.slug]
            now = time.monotonic()
            grace = self.config["recording.reconnect_grace"]
            for slug, (since, _) in list(self._held_mutes.items()):
                if now - since > grace:
                    del self._held_mutes[slug]
            if room.moderator_mutes:
                self._held_mutes[room.slug] = (now, room.moderator_mutes)
            unsubscribe, room.unsubscribe_control = room.unsubscribe_control, None
            if unsubscribe is not None:
                await unsubscribe()
            if self.relays is not None:
                self.relays.room_ended(room)              # relays it feeds end theirs
            if isinstance(room, RelayRoom):
                await room.dispose()
                return
            if self.placement is not None:
                try:
                    await self.placement.release(room.slug)
                except Exception:
                    log.warning("room claim not released; it expires by itself")

    def publication_added(self, room: Room, publication: "Publication") -> None:
        for observer in list(self.observers):
            try:
                observer.on_publication_added(room, publication)
            except Exception:
                log.exception("observer failed on publication added")

    def publication_removed(self, room: Room, publication: "Publication") -> None:
        for observer in list(self.observers):
            try:
                observer.on_publication_removed(room, publication)
            except Exception:
                log.exception("observer failed on publication removed")

    async def close(self) -> None:
        """Shutdown: every room, participant, transport and socket."""
        for room in list(self.rooms.values()):
            await room.close()
            await self.room_empty(room)




SFU: web.AppKey[Sfu] = web.AppKey("sfu", Sfu)
