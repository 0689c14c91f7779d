"""Chat routes: the room's chat WebSocket, replay and search over HTTP.

GET /rooms/{slug}/chat              WebSocket (docs/protocol.md, "## Chat")
GET /rooms/{slug}/chat/search?q=    full-text search of messages and questions
GET /episodes/{id}/chat?from=&to=   items of an episode between two offsets, and its highlights
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, AsyncIterator

import asyncpg
import orjson
from aiohttp import WSMsgType, web
from redis.exceptions import RedisError

from ..errors import ApiError, json_response, path_id
from ..gate import Admission, Entry
from ..keys import BUS, CONFIG, DB, FEATURES, GATE
from ..rooms import directory
from . import store
from .hub import CLOSE_BANNED, ChatClient, ChatHub, RoomChannel, you
from .items import KINDS, ChatError, clean_name, clean_text
from .limits import PostLimits
from .moderation import Actor, Moderation

log = logging.getLogger("odsmedia.chat")

JOIN_TIMEOUT = 10.0
UNAVAILABLE = {"type": "error", "error": "unavailable", "message": "chat storage is unavailable; try again"}
MAX_FRAME = 16 * 1024
REPLAY_LIMIT = 2000
SEARCH_LIMIT = 50


class Chat:
    """The chat feature of one process (``app[FEATURES]["chat"]``)."""

    def __init__(self, app: web.Application) -> None:
        config = app[CONFIG]
        self.db: asyncpg.Pool = app[DB]
        self.bus = app[BUS]
        self.gate = app[GATE]
        self.hub = ChatHub(self.db, self.bus)
        self.limits = PostLimits(self.bus, config["chat.rate_per_10s"])
        self.moderation = Moderation(self.db, self.bus, self.hub)
        # The schema bounds a body at 4,000 characters (migrations/0003_chat.sql).
        # Bounded to the body column (4000) when the configuration is validated.
        self.max_length: int = config["chat.max_length"]
        self.history: int = config["chat.history"]

    async def refuse_banned(self, admission: Admission, entry: Entry) -> None:
        """Gate check: a banned subject does not enter the room again (replay stays open)."""
        if entry is Entry.REPLAY or admission.is_moderator or admission.identity.kind == "none":
            return
        sanction = await store.active_sanction(self.db, admission.room.id, admission.identity.subject)
        if sanction is not None and sanction.kind == "ban":
            raise ApiError(403, "banned", "you are banned from this room")

    async def display_name(self, admission: Admission, supplied: Any) -> str:
        identity = admission.identity
        if identity.display_name:
            return identity.display_name
        if identity.account_id is not None:
            name = await self.db.fetchval("SELECT display_name FROM accounts WHERE id = $1", identity.account_id)
            if name:
                return name
        name = clean_name(supplied)
        if name:
            return name
        return "guest-" + identity.subject.rsplit(":", 1)[-1][-6:]


class ChatSession:
    """One client's requests on its socket, after it joined."""

    def __init__(self, chat: Chat, admission: Admission, client: ChatClient, channel: RoomChannel) -> None:
        self.chat = chat
        self.room = admission.room
        self.client = client
        self.channel = channel

    @property
    def actor(self) -> Actor:
        return Actor(self.client.subject, self.client.role)

    async def handle(self, data: dict[str, Any]) -> dict[str, Any]:
        kind = data.get("type")
        m = self.chat.moderation
        room, actor = self.room, self.actor
        if kind == "post":
            return await self.post(data)
        if kind == "upvote":
            self._require_poster()
            item_id = data.get("id")
            if isinstance(item_id, bool) or not isinstance(item_id, int) or item_id < 1:
                raise ChatError("invalid_id", "id must be a positive integer")
            item = await store.upvote(self.chat.db, room.id, item_id, self.client.subject)
            await self.chat.hub.dispatch(room.slug, item.event())
            return {"id": item.id, "votes": item.votes}
        if kind == "answer":
            return await m.answer(room, actor, data.get("id"), data.get("answered", True))
        if kind == "delete":
            return await m.delete(room, actor, data.get("id"))
        if kind == "clear":
            return await m.clear(room, actor)
        if kind == "timeout":
            return await m.timeout(room, actor, data.get("target"), data.get("minutes"), data.get("reason"))
        if kind == "end_timeout":
            return await m.lift(room, actor, data.get("target"), "timeout")
        if kind == "ban":
            return await m.ban(room, actor, data.get("target"), data.get("reason"))
        if kind == "unban":
            return await m.lift(room, actor, data.get("target"), "ban")
        if kind == "sanctions":
            return await m.sanctions(room, actor)
        if kind == "slow_mode":
            return await m.slow_mode(room, actor, data.get("seconds"))
        if kind in ("promote", "demote"):
            return await m.set_role(room, actor, data.get("target"), kind == "promote")
        if kind in ("mute", "unmute"):
            return await m.mute(room, actor, data.get("target"), data.get("kind"), kind == "mute")
        if kind == "kick":
            return await m.kick(room, actor, data.get("target"), data.get("reason"))
        if kind == "ping":
            return {}
        raise ChatError("unknown_type", f"unknown message type {kind!r}")

    def _require_poster(self) -> None:
        if not self.client.can_post:
            raise ChatError("sign_in_required", "sign in to chat")

    async def post(self, data: dict[str, Any]) -> dict[str, Any]:
        self._require_poster()
        kind = data.get("kind", "message")
        if kind not in KINDS:
            raise ChatError("invalid_kind", "kind must be message, question or highlight")
        text = clean_text(data.get("text", ""), max_length=self.chat.max_length, allow_empty=kind == "highlight")
        db, room, subject = self.chat.db, self.room, self.client.subject
        if kind == "highlight" and await store.live_episode(db, room.id) is None:
            raise ChatError("not_live", "highlights mark a moment of a live session; the room is not live")
        await self.chat.limits.check(room.slug, subject,
                                     slow_seconds=0 if self.client.is_moderator else self.channel.slow_mode)
        item = await store.post(db, room.id, kind=kind, author=subject, author_name=self.client.name, text=text)
        if item is None:
            sanction = await store.active_sanction(db, room.id, subject)
            if sanction is not None and sanction.kind == "ban":
                raise ChatError("banned", "you are banned from this room")
            raise ChatError("timed_out", "you are timed out",
                            until=sanction.until.isoformat() if sanction and sanction.until else None)
        await self.chat.hub.dispatch(room.slug, item.event())
        return {"id": item.id}


def _parse_after(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ChatError("invalid_after", "after must be a non-negative integer (the last seq seen)")
    return raw


async def chat_socket(request: web.Request) -> web.StreamResponse:
    chat: Chat = request.app[FEATURES]["chat"]
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

    async def refuse(event: dict[str, Any], code: int) -> web.WebSocketResponse:
        await ws.send_str(orjson.dumps(event).decode())
        await ws.close(code=code, message=event["error"].encode())
        return ws

    try:
        first = await asyncio.wait_for(ws.receive(), JOIN_TIMEOUT)
    except asyncio.TimeoutError:
        return await refuse({"type": "error", "error": "join_timeout", "message": "send join first"}, 4408)
    if first.type != WSMsgType.TEXT:
        return ws
    try:
        join = orjson.loads(first.data)
        if not isinstance(join, dict) or join.get("type") not in ("join", "auth"):
            raise ChatError("join_required", 'the first message must be {"type": "join", ...}')
        after = _parse_after(join.get("after"))
    except orjson.JSONDecodeError:
        return await refuse({"type": "error", "error": "invalid_json", "message": "not JSON"}, 4400)
    except ChatError as exc:
        return await refuse(exc.event(), 4400)
    try:
        token = join.get("token")
        if token:
            admission = await chat.gate.admit_token(token, room, Entry.JOIN)
        elif isinstance(early, ApiError):
            raise early
        else:
            admission = early
    except ApiError as exc:
        code = CLOSE_BANNED if exc.reason == "banned" else 4000 + exc.status
        return await refuse({"type": "error", **exc.body()}, code)
    identity = admission.identity
    try:
        # Posting is the gate's decision (Entry.CHAT): in a public room it needs an
        # identity, which for a guest is the anonymous cookie (a ban on a guest
        # holds as long as that browser keeps its cookie).
        await chat.gate.decide(room, identity, admission.role, Entry.CHAT)
        can_post = True
    except ApiError:
        can_post = False
    client = ChatClient(ws, request, subject=identity.subject, name=await chat.display_name(admission, join.get("name")),
                        role=admission.role, can_post=can_post)
    try:
        channel = await chat.hub.attach(room.slug, room.id, client)
    except (asyncpg.PostgresError, OSError, ConnectionError):
        return await refuse(UNAVAILABLE, 1011)
    session = ChatSession(chat, admission, client, channel)
    try:
        try:
            snap = await store.snapshot(chat.db, room.id, after=after, history=chat.history)
            slow_mode = await store.slow_mode(chat.db, room.id)
        except (asyncpg.PostgresError, OSError):
            return await refuse(UNAVAILABLE, 1011)
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
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            ref = None
            try:
                data = orjson.loads(msg.data)
                if not isinstance(data, dict):
                    raise ChatError("invalid_message", "messages are JSON objects")
                ref = data.get("ref")
                if ref is not None and (not isinstance(ref, (str, int)) or isinstance(ref, bool)
                                        or len(str(ref)) > 64):
                    ref = None
                    raise ChatError("invalid_ref", "ref must be a string or integer of at most 64 characters")
                result = await session.handle(data)
                client.send({"type": "ack", "ref": ref, **result})
            except orjson.JSONDecodeError:
                client.send(ChatError("invalid_json", "not JSON").event())
            except ChatError as exc:
                client.send(exc.event(ref))
            except (asyncpg.PostgresError, RedisError, OSError, asyncio.TimeoutError):
                # Nothing was changed (each write is one transaction); the client may retry.
                log.warning("chat request failed", exc_info=True)
                client.send({**UNAVAILABLE, "ref": ref})
    finally:
        await chat.hub.detach(room.slug, client)
    return ws


# -- HTTP: replay and search -----------------------------------------------------------

def _offset(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"invalid_{name}", f"{name} must be a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ApiError(400, f"invalid_{name}", f"{name} must be a non-negative number of seconds")
    return value


async def episode_chat(request: web.Request) -> web.Response:
    chat: Chat = request.app[FEATURES]["chat"]
    episode_id = path_id(request, "episode_id", "episode_not_found", "no such episode")
    start = _offset(request, "from", 0.0)
    end = _offset(request, "to", float("inf"))
    if end < start:
        raise ApiError(400, "invalid_window", "to must not be before from")
    row = await chat.db.fetchrow(
        "SELECT e.id, r.slug FROM episodes e JOIN rooms r ON r.id = e.room_id WHERE e.id = $1", episode_id)
    if row is None:
        raise ApiError(404, "episode_not_found", "no such episode")
    await chat.gate.admit(request, row["slug"], Entry.REPLAY)
    items = await store.episode_window(chat.db, episode_id, start, min(end, 1e12), REPLAY_LIMIT + 1)
    truncated = len(items) > REPLAY_LIMIT
    items = items[:REPLAY_LIMIT]
    highlights = await store.episode_highlights(chat.db, episode_id)
    body: dict[str, Any] = {
        "episode": episode_id,
        "from": start,
        "to": None if math.isinf(end) else end,
        "items": [i.wire() for i in items],
        "highlights": [{"id": h.id, "offset": h.wire()["offset"], "note": h.text, "name": h.author_name}
                       for h in highlights],
        "truncated": truncated,
    }
    if truncated:
        body["next_from"] = items[-1].offset
    return json_response(body)


async def search(request: web.Request) -> web.Response:
    chat: Chat = request.app[FEATURES]["chat"]
    admission = await chat.gate.admit(request, request.match_info["slug"], Entry.JOIN)
    q = request.query.get("q", "").strip()
    if not q or len(q) > 200:
        raise ApiError(400, "invalid_query", "q must be 1-200 characters")
    try:
        limit = int(request.query.get("limit", SEARCH_LIMIT))
    except ValueError:
        raise ApiError(400, "invalid_limit", "limit must be an integer") from None
    if not 1 <= limit <= 200:
        raise ApiError(400, "invalid_limit", "limit must be 1-200")
    items = await store.search(chat.db, admission.room.id, q, limit)
    return json_response({"query": q, "items": [i.wire() for i in items]})


def setup(app: web.Application) -> None:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        chat = Chat(app)
        app[FEATURES]["chat"] = chat
        app[GATE].checks.append(chat.refuse_banned)
        chat.hub.start()
        yield
        await chat.hub.stop()

    async def on_shutdown(app: web.Application) -> None:
        chat = app[FEATURES].get("chat")
        if chat is not None:
            await chat.hub.stop()

    app.cleanup_ctx.append(lifecycle)
    # Open sockets must close before the runner waits for handlers to finish.
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/rooms/{slug}/chat", chat_socket)
    app.router.add_get("/rooms/{slug}/chat/search", search)
    app.router.add_get("/episodes/{episode_id:\\d+}/chat", episode_chat)
