"""The chat feature object of one process (``app[CHAT]``).

It owns the node's ``ChatHub`` (fan-out), the post limits and moderation,
and the two things other parts ask of chat: the gate check that keeps a
banned subject out, and the display name a chat client shows.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from ..auth import accounts
from ..errors import ApiError
from ..gate import Admission, Entry
from ..keys import BUS, CONFIG, DB, GATE
from . import store
from .hub import ChatHub
from .limits import PostLimits
from .moderation import Moderation


class Chat:
    def __init__(self, app: web.Application) -> None:
        config = app[CONFIG]
        self.db: asyncpg.Pool = app[DB]
        self.bus = app[BUS]
        self.gate = app[GATE]
        self.hub = ChatHub(self.db, self.bus)
        self.limits = PostLimits(self.bus, config["chat.rate_per_10s"],
                                 network_rate=config["chat.rate_per_network_10s"],
                                 room_rate=config["chat.rate_per_room_10s"])
        self.moderation = Moderation(self.db, self.bus, self.hub, self.gate)
        # The schema bounds a body at 4,000 characters (migrations/0003_chat.sql).
        # Bounded to the body column (4000) when the configuration is validated.
        self.max_length: int = config["chat.max_length"]
        self.history: int = config["chat.history"]

    async def refuse_banned(self, admission: Admission, entry: Entry) -> None:
        """Gate check: a banned subject does not enter the room again (replay stays open).

        Whatever role the admission carries: the role is the gate's, and a ban outranks it
        (a host may ban a moderator; a token never lifts its owner's ban)."""
        if entry is Entry.REPLAY or admission.identity.kind == "none":
            return
        sanction = await store.active_sanction(self.db, admission.room.id, admission.identity.subject)
        if sanction is not None and sanction.kind == "ban":
            raise ApiError(403, "banned", "you are banned from this room")

    async def display_name(self, admission: Admission, supplied: Any) -> str:
        # One rule with signaling (accounts.shown_name): one person, one name.
        return await accounts.shown_name(self.db, admission, supplied)


CHAT: web.AppKey[Chat] = web.AppKey("chat", Chat)
