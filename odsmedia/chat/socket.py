"""The room's chat WebSocket: GET /rooms/{slug}/chat (docs/protocol.md, "## Chat").

The handshake admits through the gate, waits for ``join`` (which may carry a
token), attaches the client to the room's channel and sends ``welcome``;
then each message is looked up in ``ChatSession.HANDLERS`` by its ``type``
and answered with an ``ack`` or an error event carrying the client's ``ref``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

import asyncpg
import orjson
from aiohttp import WSMsgType, web
from redis.exceptions import RedisError

from recorder import episodes

from .. import metrics
from ..abuse import ABUSE, Held
from ..analytics.sink import audience
from ..errors import CLOSE_UNAVAILABLE, OUTAGE_ERRORS, STORAGE_ERRORS, ApiError, json_int
from ..gate import ROLE_RANK, Admission, Entry
from ..reauth import CLOSE_REVOKED, REASONS, REAUTH, credential_of
from ..rooms import directory
from ..rooms.directory import RoomRecord
from ..wire import valid_ref
from . import store
from .feature import CHAT, Chat
from .hub import CLOSE_BANNED, ChatClient, RoomChannel, you
from .items import KINDS, ChatError, clean_text
from .moderation import Actor

log = logging.getLogger("odsmedia.chat")

JOIN_TIMEOUT = 10.0
UNAVAILABLE = {"type": "error", "error": "unavailable", "message": "chat storage is unavailable; try again"}
MAX_FRAME = 16 * 1024

Handler = Callable[["ChatSession", dict[str, Any]], Awaitable[dict[str, Any]]]


class ChatSession:
    """One client's requests on its socket, after it joined."""

    def __init__(self, chat: Chat, admission: Admission, client: ChatClient, channel: RoomChannel,
                 request: web.Request) -> None:
        self.chat = chat
        self.request = request   # the socket's handshake: analytics reads its opt-out headers
        self.room = admission.room
        self.client = client
        self.channel = channel

    @property
    def actor(self) -> Actor:
        return Actor(self.client.subject, self.client.role)

    async def handle(self, data: dict[str, Any]) -> dict[str, Any]:
        kind = data.get("type")
        handler = HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            raise ChatError("unknown_type", f"unknown message type {kind!r}")
        return await handler(self, data)

    async def refresh_role(self) -> None:
        """Lower the client's role to what the gate gives its subject now (never raise it:
        promotions arrive as role notices)."""
        client = self.client
        current = await self.chat.gate.role_of_subject(self.room, client.subject)
        if ROLE_RANK[current] < ROLE_RANK[client.role]:
            client.role = current
            client.send({"type": "you", **you(client)})

    def _require_poster(self) -> None:
        if not self.client.can_post:
            raise ChatError("sign_in_required", "sign in to chat")

    async def post(self, data: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        self._require_poster()
        kind = data.get("kind", "message")
        if kind not in KINDS:
            raise ChatError("invalid_kind", "kind must be message, question or highlight")
        text = clean_text(data.get("text", ""), max_length=self.chat.max_length, allow_empty=kind == "highlight")
        db, room, subject = self.chat.db, self.room, self.client.subject
        if kind == "highlight" and await episodes.live_id(db, room.id) is None:
            raise ChatError("not_live", "highlights mark a moment of a live session; the room is not live")
        moderator = self.client.is_moderator
        await self.chat.limits.check(room.slug, subject, slow_seconds=0 if moderator else self.channel.slow_mode,
                                     network=None if moderator else self.client.network)
        item = await store.post(db, room.id, kind=kind, author=subject, author_name=self.client.name, text=text,
                                author_role=self.client.role)
        if item is None:
            sanction = await store.active_sanction(db, room.id, subject)
            if sanction is None:
                # Not sanctioned: the account was deleted or the token revoked (store._POST).
                reason = "account_deleted" if subject.startswith("a:") else "token_revoked"
                raise ChatError(reason, REASONS[reason])
            if sanction.kind == "ban":
                raise ChatError("banned", "you are banned from this room")
            raise ChatError("timed_out", "you are timed out",
                            until=sanction.until.isoformat() if sanction.until else None)
        await self.chat.hub.dispatch(room.slug, item.event())
        metrics.chat_items.labels(kind).inc()
        metrics.chat_post.observe(time.perf_counter() - started)
        audience(self.request.app).chat_item(self.request, room.id, kind)
        return {"id": item.id}

    async def answer(self, data: dict[str, Any]) -> dict[str, Any]:
        answered = data.get("answered", True)
        result = await self.chat.moderation.answer(self.room, self.actor, data.get("id"), answered)
        if answered is not False:
            audience(self.request.app).question_answered(self.request, self.room.id)
        return result

    async def upvote(self, data: dict[str, Any]) -> dict[str, Any]:
        self._require_poster()
        item_id = data.get("id")
        if json_int(item_id, low=1) is None:
            raise ChatError("invalid_id", "id must be a positive integer")
        item = await store.upvote(self.chat.db, self.room.id, item_id, self.client.subject)
        await self.chat.hub.dispatch(self.room.slug, item.event())
        return {"id": item.id, "votes": item.votes}

    async def ping(self, data: dict[str, Any]) -> dict[str, Any]:
        return {}


def _moderation(act: Callable[..., Awaitable[dict[str, Any]]]) -> Handler:
    """A handler that hands the room, the actor and the message to a ``Moderation`` action.

    The actor's role is asked of the gate at every action, never only at join: a
    moderator demoted on another node (or whose notice was lost) acts as what she is now."""
    async def handler(session: ChatSession, data: dict[str, Any]) -> dict[str, Any]:
        await session.refresh_role()
        return await act(session.chat.moderation, session.room, session.actor, data)

    return handler


HANDLERS: dict[str, Handler] = {
    "post": ChatSession.post,
    "upvote": ChatSession.upvote,
    "ping": ChatSession.ping,
    "answer": ChatSession.answer,
    "delete": _moderation(lambda m, room, actor, d: m.delete(room, actor, d.get("id"))),
    "clear": _moderation(lambda m, room, actor, d: m.clear(room, actor)),
    "timeout": _moderation(lambda m, room, actor, d: m.timeout(room, actor, d.get("target"), d.get("minutes"),
                                                              d.get("reason"))),
    "end_timeout": _moderation(lambda m, room, actor, d: m.lift(room, actor, d.get("target"), "timeout")),
    "ban": _moderation(lambda m, room, actor, d: m.ban(room, actor, d.get("target"), d.get("reason"))),
    "unban": _moderation(lambda m, room, actor, d: m.lift(room, actor, d.get("target"), "ban")),
    "sanctions": _moderation(lambda m, room, actor, d: m.sanctions(room, actor)),
    "slow_mode": _moderation(lambda m, room, actor, d: m.slow_mode(room, actor, d.get("seconds"))),
    "promote": _moderation(lambda m, room, actor, d: m.set_role(room, actor, d.get("target"), True)),
    "demote": _moderation(lambda m, room, actor, d: m.set_role(room, actor, d.get("target"), False)),
    "mute": _moderation(lambda m, room, actor, d: m.mute(room, actor, d.get("target"), d.get("source"), True)),
    "unmute": _moderation(lambda m, room, actor, d: m.mute(room, actor, d.get("target"), d.get("source"), False)),
    "kick": _moderation(lambda m, room, actor, d: m.kick(room, actor, d.get("target"), d.get("reason"))),
}


def _parse_after(raw: Any) -> int | None:
    if raw is None:
        return None
    if json_int(raw) is None:
        raise ChatError("invalid_after", "after must be a non-negative integer (the last seq seen)")
    return raw


def _parse_ref(data: dict[str, Any]) -> Any:
    ref = data.get("ref")
    if not valid_ref(ref):
        raise ChatError("invalid_ref", "ref must be a string or integer of at most 64 characters")
    return ref


class Refused(Exception):
    """The handshake ends: send ``event`` and close with ``code``."""

    def __init__(self, event: dict[str, Any], code: int) -> None:
        super().__init__(event.get("error"))
        self.event = event
        self.code = code


async def _read_join(ws: web.WebSocketResponse) -> dict[str, Any] | None:
    """The client's first message, validated as a join; None when the socket closed first."""
    try:
        first = await asyncio.wait_for(ws.receive(), JOIN_TIMEOUT)
    except asyncio.TimeoutError:
        raise Refused({"type": "error", "error": "join_timeout", "message": "send join first"}, 4408) from None
    if first.type != WSMsgType.TEXT:
        return None
    try:
        join = orjson.loads(first.data)
        if not isinstance(join, dict) or join.get("type") not in ("join", "auth"):
            raise ChatError("join_required", 'the first message must be {"type": "join", ...}')
        _parse_after(join.get("after"))
    except orjson.JSONDecodeError:
        raise Refused({"type": "error", "error": "invalid_json", "message": "not JSON"}, 4400) from None
    except ChatError as exc:
        raise Refused(exc.event(), 4400) from None
    return join


async def _admit(chat: Chat, room: RoomRecord, join: dict[str, Any], early: Admission | ApiError) -> Admission:
    """The join's token decides when it carries one; otherwise the handshake's admission does."""
    try:
        token = join.get("token")
        if token:
            return await chat.gate.admit_token(token, room, Entry.JOIN)
        if isinstance(early, ApiError):
            raise early
        return early
    except ApiError as exc:
        code = CLOSE_BANNED if exc.reason == "banned" else 4000 + exc.status
        raise Refused({"type": "error", **exc.body()}, code) from None


async def _may_post(chat: Chat, admission: Admission) -> bool:
    # Posting is the gate's decision (Entry.CHAT): in a public room it needs an
    # identity, which for a guest is the anonymous cookie (a ban on a guest
    # holds as long as that browser keeps its cookie).
    try:
        await chat.gate.reconsider(admission, Entry.CHAT)
    except ApiError:
        return False
    return True


async def _welcome(chat: Chat, room: RoomRecord, client: ChatClient, after: int | None) -> None:
    try:
        snap = await store.snapshot(chat.db, room.id, after=after, history=chat.history)
        slow_mode = await store.slow_mode(chat.db, room.id)
    except STORAGE_ERRORS:
        raise Refused(UNAVAILABLE, CLOSE_UNAVAILABLE) from None
    client.send({
        "type": "welcome",
        "room": room.slug,
        "you": you(client),
        "settings": {"slow_mode": slow_mode, "max_length": chat.max_length},
        "cursor": snap.cursor,
        "reset": snap.reset,
        "items": [i.wire() for i in snap.items],
        "deleted": snap.deleted,
    })
    client.start(snap.cursor)


async def _serve(ws: web.WebSocketResponse, session: ChatSession) -> None:
    client = session.client
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            continue
        ref = None
        try:
            data = orjson.loads(msg.data)
            if not isinstance(data, dict):
                raise ChatError("invalid_message", "messages are JSON objects")
            ref = _parse_ref(data)
            result = await session.handle(data)
            client.send({"type": "ack", "ref": ref, **result})
        except orjson.JSONDecodeError:
            client.send(ChatError("invalid_json", "not JSON").event())
        except ChatError as exc:
            client.send(exc.event(ref))
        except (asyncpg.PostgresError, RedisError, *OUTAGE_ERRORS):
            # Nothing was changed (each write is one transaction); the client may retry.
            log.warning("chat request failed", exc_info=True)
            client.send({**UNAVAILABLE, "ref": ref})
        except Exception:
            # A bug, not the client's fault: the socket stays and the request is answered.
            log.exception("chat request failed unexpectedly")
            client.send({"type": "error", "error": "internal", "message": "internal error", "ref": ref})


async def chat_socket(request: web.Request) -> web.StreamResponse:
    chat = request.app[CHAT]
    room = await directory.require(chat.db, request.match_info["slug"])  # 404 before the upgrade
    # Admit from the handshake before upgrading, so that whatever the identity
    # resolvers set (a guest's new anonymous cookie) rides on the 101 response.
    # A refusal waits: the join message may still bring a token.
    early: Admission | ApiError
    try:
        early = await chat.gate.admit(request, room, Entry.JOIN)
    except ApiError as exc:
        early = exc
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=MAX_FRAME, compress=False)
    await ws.prepare(request)
    try:
        join = await _read_join(ws)
        if join is None:
            return ws
        admission = await _admit(chat, room, join, early)
        caps = request.app[ABUSE]
        client = ChatClient(ws, request, subject=admission.identity.subject,
                            name=await chat.display_name(admission, join.get("name")),
                            role=admission.role, can_post=await _may_post(chat, admission),
                            network=caps.network(request))
        try:
            # One per socket from this network, released when the socket ends.
            lease = caps.acquire(Held.CHAT, request)
        except ApiError as exc:
            raise Refused({"type": "error", **exc.body()}, 4000 + exc.status) from None
        request.task.add_done_callback(lambda _: lease.release())
        try:
            channel = await chat.hub.attach(room.slug, room.id, client)
        except (asyncpg.PostgresError, OSError, ConnectionError):
            raise Refused(UNAVAILABLE, CLOSE_UNAVAILABLE) from None
        unwatch = request.app[REAUTH].watch(credential_of(admission.identity), lambda reason: client.close(
            CLOSE_REVOKED, {"type": "error", "error": reason, "message": REASONS[reason]}))
        try:
            await _welcome(chat, room, client, _parse_after(join.get("after")))
            await _serve(ws, ChatSession(chat, admission, client, channel, request))
        finally:
            unwatch()
            await chat.hub.detach(room.slug, client)
    except OUTAGE_ERRORS:
        # PostgreSQL or Redis went away during the join: 1011, the client retries later.
        log.warning("chat join failed: service unavailable")
        await _refuse(ws, Refused(UNAVAILABLE, CLOSE_UNAVAILABLE))
    except Refused as refused:
        await _refuse(ws, refused)
    return ws


async def _refuse(ws: web.WebSocketResponse, refused: Refused) -> None:
    if ws.closed:
        return
    await ws.send_str(orjson.dumps(refused.event).decode())
    await ws.close(code=refused.code, message=refused.event["error"].encode())
