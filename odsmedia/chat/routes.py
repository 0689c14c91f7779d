"""Chat routes: the room's chat WebSocket, replay and search over HTTP.

GET /rooms/{slug}/chat              WebSocket (docs/protocol.md, "## Chat")
GET /rooms/{slug}/chat/search?q=    full-text search of messages and questions
GET /episodes/{id}/chat?from=&to=   items of an episode between two offsets, and its highlights
"""

from __future__ import annotations

import math
from typing import Any, AsyncIterator

from aiohttp import web

from recorder import episodes

from ..analytics.sink import audience
from ..errors import ApiError, has_unstorable, json_response, path_id, query_int
from ..gate import Entry
from ..keys import GATE
from . import store
from .feature import CHAT, Chat
from .socket import chat_socket

REPLAY_LIMIT = 2000
SEARCH_LIMIT = 50


# -- HTTP: replay and search -----------------------------------------------------------

def _offset(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        if not raw.isascii():   # float() takes any script's digits
            raise ValueError(raw)
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"invalid_{name}", f"{name} must be a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ApiError(400, f"invalid_{name}", f"{name} must be a non-negative number of seconds")
    return value


async def episode_chat(request: web.Request) -> web.Response:
    chat = request.app[CHAT]
    episode_id = path_id(request, "episode_id", "episode_not_found", "no such episode")
    start = _offset(request, "from", 0.0)
    end = _offset(request, "to", float("inf"))
    if end < start:
        raise ApiError(400, "invalid_window", "to must not be before from")
    slug = await episodes.room_slug(chat.db, episode_id)
    if slug is None:
        raise ApiError(404, "episode_not_found", "no such episode")
    await chat.gate.admit(request, slug, Entry.REPLAY)
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
    chat = request.app[CHAT]
    admission = await chat.gate.admit(request, request.match_info["slug"], Entry.JOIN)
    q = request.query.get("q", "").strip()
    if not q or len(q) > 200 or has_unstorable(q):
        raise ApiError(400, "invalid_query", "q must be 1-200 characters, without NUL")
    limit = query_int(request, "limit", SEARCH_LIMIT, low=1, high=200)
    items = await store.search(chat.db, admission.room.id, q, limit)
    audience(request.app).search(request, admission.room.id)
    return json_response({"query": q, "items": [i.wire() for i in items]})


def setup(app: web.Application) -> None:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        chat = Chat(app)
        app[CHAT] = chat
        app[GATE].checks.append(chat.refuse_banned)
        chat.hub.start()
        yield
        await chat.hub.stop()

    async def on_shutdown(app: web.Application) -> None:
        chat = app.get(CHAT)
        if chat is not None:
            await chat.hub.stop()

    app.cleanup_ctx.append(lifecycle)
    # Open sockets must close before the runner waits for handlers to finish.
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/rooms/{slug}/chat", chat_socket)
    app.router.add_get("/rooms/{slug}/chat/search", search)
    app.router.add_get("/episodes/{episode_id:\\d+}/chat", episode_chat)
