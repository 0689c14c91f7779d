"""WebSocket signaling at GET /rooms/{slug}/ws (protocol: docs/protocol.md).

One socket is one Participant.  The first message must be ``join`` (a token
in it, or the page's cookies through the gate).  Messages are JSON objects
with a ``type``; every one is validated and either acted on or answered
with ``{"type": "error", "code", "message", "ref"}``.  Requests are handled
in order; replies and room events share one outbound queue so a client sees
them in the order they happened.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import WSMsgType, web

from odsmedia.abuse import ABUSE, Held, Lease
from odsmedia.analytics.sink import audience
from odsmedia.auth.accounts import shown_name
from odsmedia.errors import CLOSE_UNAVAILABLE, OUTAGE_ERRORS, ApiError, unavailable
from odsmedia.gate import Admission, Entry
from odsmedia.keys import CONFIG, DB, GATE
from odsmedia.media.ice import browser_ice_servers
from odsmedia.reauth import CLOSE_REVOKED, REASONS, REAUTH, credential_of
from odsmedia.rooms.errors import SfuError
from odsmedia.rooms.participant import Participant
from odsmedia.rooms.room import Room
from odsmedia.rooms.sfu import SFU
from odsmedia.rooms.transport import PublisherTransport, SubscriberTransport
from odsmedia.wire import NAME_MAX, clean_name, valid_ref

log = logging.getLogger("odsmedia.signaling")

MAX_MESSAGE = 256 * 1024
JOIN_TIMEOUT = 10.0

SOCKETS: "weakref.WeakSet[web.WebSocketResponse]" = weakref.WeakSet()


class Invalid(SfuError):
    def __init__(self, message: str) -> None:
        super().__init__(400, "invalid_message", message)


def _ref(message: dict[str, Any]) -> Any:
    ref = message.get("ref")
    if valid_ref(ref):
        return ref
    raise Invalid("ref must be a string or integer of at most 64 characters")


def _str_field(message: dict[str, Any], key: str, *, required: bool = True, limit: int = 200) -> str | None:
    value = message.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise Invalid(f"{key} must be a non-empty string of at most {limit} characters")
    return value


def _supplied_name(requested: Any) -> str | None:
    """The name a page asked for, checked; the name shown is accounts.shown_name's."""
    if requested is None:
        return None
    if not isinstance(requested, str):
        raise Invalid("name must be a string")
    name = clean_name(requested)
    if name is None:
        raise Invalid(f"name must be 1-{NAME_MAX} printable characters")
    return name


class Session:
    """The server side of one signaling socket."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request = request
        self.ws = ws
        self.app = request.app
        self.slug = request.match_info["slug"]
        self.room: Room | None = None
        self.participant: Participant | None = None
        self.admission: Admission | None = None
        self.handlers: dict[str, Callable[[dict[str, Any], Any], Awaitable[None]]] = {
            "join": self.on_join,
            "publish": self.on_publish,
            "unpublish": self.on_close_transport,
            "subscribe": self.on_subscribe,
            "answer": self.on_answer,
            "unsubscribe": self.on_close_transport,
            "candidate": self.on_candidate,
            "mute": self.on_mute,
            "unmute": self.on_mute,
            "leave": self.on_leave,
            "ping": self.on_ping,
        }
        self.closing = False
        self.close_code = 1000
        self.lease: Lease | None = None
        self.unwatch: Callable[[], None] = lambda: None

    # --- output -----------------------------------------------------------------------------

    async def _write(self, message: dict[str, Any]) -> None:
        if not self.ws.closed:
            await self.ws.send_str(orjson.dumps(message).decode())

    async def reply(self, message: dict[str, Any]) -> None:
        if self.participant is not None:
            self.participant.notify(message)   # same queue as room events: keeps order
        else:
            await self._write(message)

    async def error(self, exc: ApiError, ref: Any) -> None:
        await self.reply({"type": "error", "code": exc.reason, "message": exc.message, "status": exc.status,
                          "ref": ref, **exc.extra})

    # --- loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        joined_by = asyncio.get_running_loop().time() + JOIN_TIMEOUT
        try:
            while not self.ws.closed and not self.closing:
                timeout = None if self.participant else max(0.0, joined_by - asyncio.get_running_loop().time())
                try:
                    msg = await self.ws.receive(timeout=timeout)
                except asyncio.TimeoutError:
                    await self.error(SfuError(408, "join_timeout", "send join first"), None)
                    break
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                if msg.type != WSMsgType.TEXT:
                    await self.error(Invalid("messages are JSON text frames"), None)
                    continue
                await self.handle(msg.data)
        finally:
            await self.cleanup()

    async def handle(self, raw: str) -> None:
        ref = None
        try:
            try:
                message = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise Invalid("not valid JSON") from None
            if not isinstance(message, dict):
                raise Invalid("a message is a JSON object")
            ref = message.get("ref") if isinstance(message.get("ref"), (str, int)) else None
            ref = _ref(message)
            kind = message.get("type")
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise SfuError(400, "unknown_type", f"unknown message type {kind!r}")
            if self.participant is None and kind != "join":
                raise SfuError(409, "not_joined", "send join first")
            await handler(message, ref)
        except ApiError as exc:
            await self.error(exc, ref)
            if self.participant is None and exc.status in (401, 402, 403, 404):
                # A refused join ends the conversation; the page shows the reason.
                self.closing = True
        except OUTAGE_ERRORS as exc:
            # PostgreSQL or Redis is away: say so and close with 1011 so the client retries later.
            log.warning("signaling request failed: service unavailable (%s)", type(exc).__name__)
            await self.error(unavailable(), ref)
            self.closing = True
            self.close_code = CLOSE_UNAVAILABLE
        except Exception:
            log.exception("signaling handler failed")
            await self.error(SfuError(500, "internal", "internal error"), ref)

    def revoked(self, reason: str) -> None:
        """What admitted this socket ended (``odsmedia.reauth``): say why, then close 4401."""
        participant = self.participant
        if participant is not None:
            participant.notify({"type": "error", "code": reason, "message": REASONS[reason], "status": 401,
                                "ref": None})

        async def close() -> None:
            if participant is not None:
                await participant.flush_and_stop(timeout=0.5)
            await self.ws.close(code=CLOSE_REVOKED, message=reason.encode())

        self.closing = True
        asyncio.ensure_future(close())

    async def cleanup(self) -> None:
        self.unwatch()
        if self.lease is not None:
            self.lease.release()
        participant, room = self.participant, self.room
        if participant is not None and room is not None:
            await room.leave(participant)
            await participant.flush_and_stop(timeout=0.5)
        if not self.ws.closed:
            await self.ws.close(code=self.close_code)

    # --- handlers ---------------------------------------------------------------------------

    async def on_join(self, message: dict[str, Any], ref: Any) -> None:
        if self.participant is not None:
            raise SfuError(409, "already_joined", "this socket already joined")
        gate = self.app[GATE]
        token = message.get("token")
        if token is not None:
            if not isinstance(token, str) or len(token) > 200:
                raise Invalid("token must be a string")
            admission = await gate.admit_token(token, self.slug, Entry.JOIN)
        else:
            admission = await gate.admit(self.request, self.slug, Entry.JOIN)
        # Held until the socket ends (cleanup releases it).
        self.lease = self.app[ABUSE].acquire(Held.SIGNALING, self.request)
        name = await shown_name(self.app[DB], admission, _supplied_name(message.get("name")))
        view = audience(self.app).live_view(self.request, admission.room.id, admission.identity.subject,
                                            admission.role, "webrtc")
        self.room, participant = await self.app[SFU].join(
            admission.room, subject=admission.identity.subject, name=name[:NAME_MAX],
            role=admission.role, via="ws", write=self._write,
            close_socket=lambda code: asyncio.ensure_future(self.ws.close(code=code)),
            on_leave=view.end if view is not None else None)
        if view is not None:
            view.start()
        self.admission, self.participant = admission, participant
        self.unwatch = self.app[REAUTH].watch(credential_of(admission.identity), self.revoked)
        await self.reply({
            "type": "joined", "ref": ref,
            "participant": participant.describe(),
            "room": admission.room.public(),
            **self.room.snapshot(),
            "ice_servers": browser_ice_servers(self.app[CONFIG], participant.id),
            "ice_transport_policy": "relay" if self.app[CONFIG]["ice.force_relay"] else "all",
        })

    async def on_publish(self, message: dict[str, Any], ref: Any) -> None:
        assert self.room and self.participant and self.admission
        # Whether this identity may publish is the gate's decision, as for WHIP.
        await self.app[GATE].reconsider(self.admission, Entry.PUBLISH)
        sources = message.get("sources")
        if sources is not None and (not isinstance(sources, dict)
                                    or not all(isinstance(v, str) for v in sources.values())):
            raise Invalid("sources must map mid to a source name")
        transport = await self.room.publish(self.participant, message.get("sdp"), sources)
        await self.reply({"type": "answer", "ref": ref, "transport": transport.id, "sdp": transport.local_sdp(),
                          "publications": [p.describe() for p in transport.publications]})

    async def on_subscribe(self, message: dict[str, Any], ref: Any) -> None:
        assert self.room and self.participant
        ids = message.get("publications")
        if ids is not None and (not isinstance(ids, list) or not ids or len(ids) > 16
                                or not all(isinstance(i, str) for i in ids)):
            raise Invalid("publications must be a list of 1-16 publication ids")
        transport = await self.room.subscribe(self.participant, ids)
        await self.reply({"type": "offer", "ref": ref, "transport": transport.id, "sdp": transport.local_sdp(),
                          "publications": transport.describe()["publications"]})

    async def on_answer(self, message: dict[str, Any], ref: Any) -> None:
        assert self.room and self.participant
        transport = self.room.transport_of(self.participant, _str_field(message, "transport"))
        if not isinstance(transport, SubscriberTransport):
            raise SfuError(409, "unexpected_answer", "answers are for subscriber transports")
        await transport.accept(message.get("sdp"))
        await self.reply({"type": "ok", "ref": ref, "for": "answer", "transport": transport.id})

    async def on_candidate(self, message: dict[str, Any], ref: Any) -> None:
        assert self.room and self.participant
        transport = self.room.transport_of(self.participant, _str_field(message, "transport"))
        await transport.add_candidate(message.get("candidate"))

    async def on_close_transport(self, message: dict[str, Any], ref: Any) -> None:
        assert self.room and self.participant
        transport = self.room.transport_of(self.participant, _str_field(message, "transport"))
        wanted = PublisherTransport if message["type"] == "unpublish" else SubscriberTransport
        if not isinstance(transport, wanted):
            raise SfuError(409, "wrong_transport", f"{message['type']} needs a "
                           f"{'publisher' if wanted is PublisherTransport else 'subscriber'} transport")
        await transport.close()
        await self.reply({"type": "ok", "ref": ref, "for": message["type"], "transport": transport.id})

    async def on_mute(self, message: dict[str, Any], ref: Any) -> None:
        assert self.room and self.participant
        publication = self.room.own_publication(self.participant, _str_field(message, "publication"))
        self.room.set_muted(publication, message["type"] == "mute", by="self")
        await self.reply({"type": "ok", "ref": ref, "for": message["type"], "publication": publication.id})

    async def on_leave(self, message: dict[str, Any], ref: Any) -> None:
        await self.reply({"type": "ok", "ref": ref, "for": "leave"})
        self.closing = True

    async def on_ping(self, message: dict[str, Any], ref: Any) -> None:
        await self.reply({"type": "pong", "ref": ref})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    SOCKETS.add(ws)
    await Session(request, ws).run()
    return ws


async def close_all(app: web.Application) -> None:
    for ws in list(SOCKETS):
        if not ws.closed:
            await ws.close(code=1001, message=b"server shutdown")
