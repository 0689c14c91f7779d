"""Relays: one room's media served by more than one node.

The node that holds a room's publishers is its origin.  Another node asked
to serve a viewer of that room (``Placement.relay_source`` says so) opens a
``RelayRoom``: a Room whose publications are ``MirroredPublication`` s fed
by one pipe each (``media.pipe``) from a source node -- the origin, or a
relay that itself is fed by it (a tree) -- and fanned out to local viewers
by the same packet path as on the origin.  The source sees one subscriber
per relay per publication.

``RelayHub`` (one per Sfu) speaks the control exchange over the Redis bus
(``channels.relay_node_channel`` / ``relay_room_channel``; the message
table is docs/relays.md):

- as a source: answers ``watch`` (the room's publications) and ``pipe``
  (open a PipeSource toward the relay's socket), tells watchers about
  publications that come, go or change mute, and that the room ended;
  closes a pipe when its relay asks, when the publication ends, or when the
  relay has been silent (no RTCP) for three stall periods.
- as a relay: sends those requests, keeps each pipe fed (rebuilds one that
  carried nothing for ``relay.stall_seconds`` while its publication lives
  and is unmuted) and ends the relay room when the source ends the room or
  stops answering.

A relay room lives while it has local participants, as any room; when it
ends because its source went away its viewers get ``track_unpublished``
and then the ``room_moved`` error and a 1012 close (come back: placement
finds the room's new home), WHEP sessions end.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from ..channels import relay_node_channel, relay_room_channel
from ..media import codecs
from ..media.pipe import PipeCrypto, PipeSink, PipeSource, new_keys
from .errors import SfuError
from .participant import Participant
from .publication import Publication
from .room import Room

if TYPE_CHECKING:
    from aiortc import RTCRtpCodecParameters

    from ..bus import Bus
    from .directory import RoomRecord
    from .sfu import Sfu

log = logging.getLogger("odsmedia.relay")

MIRRORED_EVENTS = ("track_published", "track_unpublished", "track_muted", "track_unmuted")
CLOSE_MOVED = 1012          # WebSocket "service restart": the page joins again and is placed anew


def describe_for_relay(publication: Publication) -> dict[str, Any]:
    """A publication as a relay needs it: the page's description plus its owner and codec."""
    codec = publication.codec
    return {**publication.describe(), "owner": publication.participant.describe(),
            "codec_params": {"mimeType": codec.mimeType, "clockRate": codec.clockRate,
                             "channels": codec.channels, "parameters": dict(codec.parameters)}}


class MirroredPublication(Publication):
    """A relay room's copy of a source node's publication: packets arrive over ``pipe``.

    Keyframe requests and upstream NACKs go up the current pipe.  Mute is the
    source's to enforce (its pipe carries nothing while muted), so here it is
    only mirrored for the pages: the fan-out never pauses, and the pipe's
    stream, contiguous across the mute, resumes at the keyframe the source
    sends."""

    def __init__(self, owner: Participant, description: dict[str, Any], codec: "RTCRtpCodecParameters", *,
                 pli_interval: float) -> None:
        super().__init__(owner, description["kind"], codec, source=description["source"],
                         pli_interval=pli_interval, request_pli=self._send_pli_up)
        self.id = description["id"]
        self.pipe: PipeSink | None = None
        self.rebuilds = 0
        self.fanout.send_nack = self._send_nack_up
        self.mirror(description.get("muted_by"))

    def mirror(self, muted_by: str | None) -> None:
        self._muted = muted_by == "self"
        self._moderator_muted = muted_by == "moderator"

    def _send_pli_up(self) -> None:
        if self.pipe is not None:
            self.pipe.send_pli()

    def _send_nack_up(self, media_ssrc: int, lost: list[int]) -> None:
        if self.pipe is not None:
            self.pipe.send_nack(media_ssrc, lost)

    def end(self) -> None:
        super().end()
        if self.pipe is not None:
            self.pipe.close()


def _owner(description: dict[str, Any]) -> Participant:
    owner = description.get("owner") or {}
    participant = Participant(str(owner.get("subject", "")), owner.get("name"), str(owner.get("role", "host")),
                              via="relay")
    participant.id = str(owner.get("id", description.get("participant", participant.id)))
    return participant


class RelayRoom(Room):
    """A room on a node that is not its origin, fed from ``source`` (a node id)."""

    def __init__(self, sfu: "Sfu", record: "RoomRecord", *, hub: "RelayHub", source: str, origin_url: str) -> None:
        super().__init__(sfu, record)
        self.hub = hub
        self.source = source
        self.origin_url = origin_url
        self.publications: dict[str, MirroredPublication] = {}    # type: ignore[assignment]
        self.ended = False
        self._unsubscribe_events = None
        self._watch: asyncio.Task[None] | None = None
        # Source events, applied in order by one task: applying one may wait for a reply, which
        # the bus delivers on the same reader that delivers the events.
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._applier: asyncio.Task[None] | None = None

    # --- start and end ----------------------------------------------------------------------

    async def start(self) -> None:
        """Watch the source and pipe every publication it has; 409 room_on_other_node when it
        does not serve the room (any more)."""
        hub = self.hub
        self._unsubscribe_events = await hub.bus.subscribe(relay_room_channel(self.source, self.slug),
                                                           self._events.put_nowait)
        reply = await hub.request(self.source, {"type": "watch", "slug": self.slug})
        if reply is None or not reply.get("ok"):
            await self._stop_watching()
            raise self._elsewhere()
        for description in reply.get("publications", ()):
            if not await self._add(description, announce=False):
                await self.dispose()
                raise self._elsewhere()
        self._watch = asyncio.ensure_future(self._watch_pipes())
        self._applier = asyncio.ensure_future(self._apply_events())

    def _elsewhere(self) -> SfuError:
        err = SfuError(409, "room_on_other_node", "this room is live on another node")
        err.extra["node_url"] = self.origin_url
        return err

    async def publish(self, participant: Participant, offer: object,
                      sources: dict[str, str] | None = None):   # type: ignore[override]
        raise self._elsewhere()        # publishers go to the origin

    async def dispose(self) -> None:
        """The last local participant left (or the source went away): stop pulling."""
        for task in (self._watch, self._applier):
            if task is not None and task is not asyncio.current_task():
                task.cancel()       # (the task that ended the room returns by itself)
        self._watch = self._applier = None
        for publication in list(self.publications.values()):
            publication.end()
        await self._stop_watching()

    async def _stop_watching(self) -> None:
        unsubscribe, self._unsubscribe_events = self._unsubscribe_events, None
        if unsubscribe is not None:
            await unsubscribe()
        await self.hub.send(self.source, {"type": "unwatch", "slug": self.slug})

    async def end(self, reason: str) -> None:
        """The source ended the room or is gone: viewers are told and sent to find its new home."""
        if self.ended:
            return
        self.ended = True
        log.info("relay room ended", extra={"room": self.slug, "reason": reason})
        await self._publications_ended(list(self.publications.values()))
        await self.close(code="room_moved", message=f"the room's media source went away ({reason})",
                         close_code=CLOSE_MOVED, reason=reason)

    # --- publications -----------------------------------------------------------------------

    async def _add(self, description: dict[str, Any], *, announce: bool = True) -> bool:
        """Mirror one publication and open its pipe; False when the source does not answer."""
        if description.get("id") in self.publications or self.ended:
            return True
        params = description.get("codec_params") or {}
        codec = codecs.forwardable(params.get("mimeType", ""), params.get("parameters") or {})
        if codec is None:
            log.warning("relay: publication codec not forwardable", extra={"room": self.slug})
            return True
        publication = MirroredPublication(_owner(description), description, codec,
                                          pli_interval=self.sfu.config["media.pli_interval"])
        self.publications[publication.id] = publication
        if announce:
            self.broadcast({"type": "track_published", "publication": publication.describe()})
        return await self._pipe(publication)

    async def _pipe(self, publication: MirroredPublication) -> bool:
        """Open (or rebuild) ``publication``'s pipe; False when the source does not answer."""
        hub = self.hub
        keys = new_keys() if hub.srtp else None
        sink = PipeSink(publication.fanout, crypto=PipeCrypto(keys[1], keys[0]) if keys else PipeCrypto(None, None))
        if hub.drop is not None:
            sink.drop = hub.drop(self.slug, publication)
        local = await sink.open(hub.address)
        reply = await hub.request(self.source, {"type": "pipe", "slug": self.slug, "publication": publication.id,
                                                "addr": list(local), "keys": list(keys) if keys else None})
        if reply is None or publication.ended:
            sink.close()
            return reply is not None
        if not reply.get("ok"):
            sink.close()
            return True            # the publication ended meanwhile: its track_unpublished follows
        sink.connect(tuple(reply["addr"]))
        old, publication.pipe = publication.pipe, sink
        if old is not None:
            old.close()
            publication.rebuilds += 1
            hub.rebuilds += 1
            await hub.send(self.source, {"type": "unpipe", "slug": self.slug, "pipe": old.local and list(old.local)})
        return True

    async def _apply_events(self) -> None:
        try:
            while not self.ended:
                await self._on_event(await self._events.get())
        except asyncio.CancelledError:
            pass

    async def _on_event(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ended":
            await self.end("origin_ended")
        elif kind == "track_published" and isinstance(message.get("publication"), dict):
            if not await self._add(message["publication"]):
                await self.end("origin_lost")
        elif kind == "track_unpublished":
            publication = self.publications.get(message.get("publication"))   # type: ignore[arg-type]
            if publication is not None:
                await self._publications_ended([publication])
        elif kind in ("track_muted", "track_unmuted"):
            publication = self.publications.get(message.get("publication"))   # type: ignore[arg-type]
            if publication is not None:
                muted = kind == "track_muted"
                publication.mirror(message.get("by") if muted else None)
                self.broadcast({"type": kind, "publication": publication.id, "by": message.get("by")})

    async def _watch_pipes(self) -> None:
        """Keep every pipe fed; a heartbeat tells the source this relay still listens."""
        stall = self.hub.stall
        try:
            while not self.ended:
                await asyncio.sleep(min(1.0, stall / 4))
                now = time.monotonic()
                for publication in list(self.publications.values()):
                    pipe = publication.pipe
                    if pipe is None or publication.ended:
                        continue
                    pipe.heartbeat()
                    # (A pipe the source said BYE to while the publication is still mirrored here
                    # -- its sweep took this relay for dead -- goes silent and is rebuilt the same way.)
                    if publication.forwarding and pipe.idle_for(now) > stall:
                        log.warning("relay pipe stalled; rebuilding", extra={"room": self.slug,
                                                                             "publication": publication.id})
                        if not await self._pipe(publication):
                            await self.end("origin_lost")
                            return
        except asyncio.CancelledError:
            pass


class _Served:
    """A source's view of one relay room it feeds: which node, which pipes."""

    __slots__ = ("node", "pipes")

    def __init__(self, node: str) -> None:
        self.node = node
        self.pipes: dict[tuple, tuple[str, PipeSource]] = {}     # relay's address -> (publication, pipe)


class RelayHub:
    """This node's relay control: requests to it as a source, requests its relay rooms make."""

    def __init__(self, sfu: "Sfu", bus: "Bus") -> None:
        config = sfu.config
        self.sfu = sfu
        self.bus = bus
        self.node_id = bus.node_id
        self.stall: float = max(0.2, config["relay.stall_seconds"])
        self.srtp: bool = config["relay.srtp"]
        self.address: str = config["relay.address"] or "127.0.0.1"
        self.served: dict[str, dict[str, _Served]] = {}         # slug -> relay node -> what it gets
        self.rebuilds = 0
        # Loss hook for tests and benchmarks: (slug, publication) -> PipeSink.drop for its new pipes.
        self.drop = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._unsubscribe = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._unsubscribe = await self.bus.subscribe(relay_node_channel(self.node_id), self._on_message)
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for slug in list(self.served):
            self._drop_room(slug)
        if self._unsubscribe is not None:
            await self._unsubscribe()

    # --- the exchange -----------------------------------------------------------------------

    async def send(self, node: str, message: dict[str, Any]) -> None:
        try:
            await self.bus.publish(relay_node_channel(node), {**message, "from": self.node_id})
        except Exception:
            log.warning("relay: control message not sent", extra={"node": node})

    async def request(self, node: str, message: dict[str, Any]) -> dict[str, Any] | None:
        """Send a request and wait for its reply; None when none comes within the stall time."""
        req = f"{self.node_id}-{next(self._ids)}-{secrets.token_hex(3)}"
        future = self._replies[req] = asyncio.get_running_loop().create_future()
        try:
            await self.send(node, {**message, "req": req})
            return await asyncio.wait_for(future, self.stall)
        except asyncio.TimeoutError:
            return None
        finally:
            self._replies.pop(req, None)

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind, sender = message.get("type"), message.get("from")
        if not isinstance(sender, str):
            return
        if kind == "reply":
            future = self._replies.get(message.get("req"))    # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_result(message)
            return
        slug = message.get("slug")
        if not isinstance(slug, str):
            return
        if kind == "watch":
            await self._reply(sender, message, self._watch(slug, sender))
        elif kind == "pipe":
            await self._reply(sender, message, await self._open_pipe(slug, sender, message))
        elif kind == "unpipe":
            served = self.served.get(slug, {}).get(sender)
            addr = message.get("pipe")
            if served is not None and isinstance(addr, list):
                entry = served.pipes.pop(tuple(addr), None)
                if entry is not None:
                    entry[1].close()
        elif kind == "unwatch":
            served = self.served.get(slug, {}).pop(sender, None)
            if served is not None:
                for _, pipe in served.pipes.values():
                    pipe.close()

    async def _reply(self, node: str, request: dict[str, Any], body: dict[str, Any]) -> None:
        await self.send(node, {"type": "reply", "req": request.get("req"), **body})

    # --- as a source ------------------------------------------------------------------------

    def _watch(self, slug: str, node: str) -> dict[str, Any]:
        room = self.sfu.rooms.get(slug)
        if room is None or getattr(room, "ended", False):
            return {"ok": False, "reason": "not_live"}
        self.served.setdefault(slug, {}).setdefault(node, _Served(node))
        return {"ok": True, "publications": [describe_for_relay(p) for p in room.publications.values()]}

    async def _open_pipe(self, slug: str, node: str, message: dict[str, Any]) -> dict[str, Any]:
        room = self.sfu.rooms.get(slug)
        pid, addr, keys = message.get("publication"), message.get("addr"), message.get("keys")
        publication = room.publications.get(pid) if room is not None and isinstance(pid, str) else None
        if publication is None or publication.ended:
            return {"ok": False, "reason": "unknown_publication"}
        if not (isinstance(addr, list) and len(addr) == 2 and isinstance(addr[0], str) and isinstance(addr[1], int)):
            return {"ok": False, "reason": "invalid_address"}
        if keys is not None and not (isinstance(keys, list) and len(keys) == 2
                                     and all(isinstance(k, str) for k in keys)):
            return {"ok": False, "reason": "invalid_keys"}
        served = self.served.setdefault(slug, {}).setdefault(node, _Served(node))
        crypto = PipeCrypto(keys[0], keys[1]) if keys else PipeCrypto(None, None)
        pipe = PipeSource(publication.fanout, publication.codec.payloadType, remote=(addr[0], addr[1]),
                          request_keyframe=publication.request_keyframe, crypto=crypto)
        local = await pipe.open(self.address)
        old = served.pipes.pop((addr[0], addr[1]), None)
        if old is not None:
            old[1].close()
        served.pipes[(addr[0], addr[1])] = (publication.id, pipe)
        return {"ok": True, "addr": list(local)}

    def room_event(self, room: Room, message: dict[str, Any]) -> None:
        """Room.broadcast's copy: what watchers of this room mirror."""
        if message.get("type") not in MIRRORED_EVENTS or not self.served.get(room.slug):
            return
        if message["type"] == "track_published":
            publication = room.publications.get(message["publication"]["id"])
            if publication is None:
                return
            message = {**message, "publication": describe_for_relay(publication)}
        elif message["type"] == "track_unpublished":
            self._close_pipes(room.slug, message["publication"])
        asyncio.ensure_future(self._tell(room.slug, message))

    def room_ended(self, room: Room) -> None:
        if self._drop_room(room.slug):
            asyncio.ensure_future(self._tell(room.slug, {"type": "ended"}))

    async def _tell(self, slug: str, message: dict[str, Any]) -> None:
        try:
            await self.bus.publish(relay_room_channel(self.node_id, slug), message)
        except Exception:
            log.warning("relay: room event not published", extra={"room": slug})

    def _close_pipes(self, slug: str, publication_id: str) -> None:
        for served in self.served.get(slug, {}).values():
            for addr, (pid, pipe) in list(served.pipes.items()):
                if pid == publication_id:
                    pipe.close()
                    del served.pipes[addr]

    def _drop_room(self, slug: str) -> bool:
        watchers = self.served.pop(slug, None)
        for served in (watchers or {}).values():
            for _, pipe in served.pipes.values():
                pipe.close()
        return bool(watchers)

    async def _sweep(self) -> None:
        """Close pipes whose relay stopped listening (no RTCP for three stall periods)."""
        try:
            while True:
                await asyncio.sleep(self.stall)
                now = time.monotonic()
                for served_by_node in list(self.served.values()):
                    for served in served_by_node.values():
                        for addr, (_, pipe) in list(served.pipes.items()):
                            if now - pipe.last_heard > 3 * self.stall:
                                pipe.close()
                                del served.pipes[addr]
        except asyncio.CancelledError:
            pass

    # --- figures ----------------------------------------------------------------------------

    def pipes(self) -> tuple[list[PipeSource], list[PipeSink]]:
        sources = [pipe for by_node in self.served.values() for served in by_node.values()
                   for _, pipe in served.pipes.values()]
        sinks = [p.pipe for room in self.sfu.rooms.values() if isinstance(room, RelayRoom)
                 for p in room.publications.values() if p.pipe is not None and not p.pipe.closed]
        return sources, sinks
