"""The auth feature object: secret, mailer, session cache and cross-node invalidation.

``app[AUTH]`` holds one ``AuthService``.  Other features use it through this
module and ``auth.sessions_web`` (who is signed in), never through the route
handlers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from aiohttp import web

from ..bus import Bus
from ..channels import SESSIONS
from ..config import Config
from ..keys import CONFIG
from ..mail import MailError, Mailer, Message
from ..privacy.region import client_region
from .ratelimit import LocalWindows
from .sessions import SessionCache

log = logging.getLogger("odsmedia.auth")

# Extra fields for GET /api/me contributed by other features (billing: plan and status).
MeExtra = Callable[[web.Request, int], Awaitable[dict]]


@dataclass
class AuthService:
    config: Config
    mailer: Mailer
    secret: str
    sessions: SessionCache
    me_extras: list[MeExtra] = field(default_factory=list)
    bus: Bus | None = None
    # Rate-limit windows of this node, used while Redis is unreachable.
    local_limits: LocalWindows = field(default_factory=LocalWindows)
    _pending: set[asyncio.Task] = field(default_factory=set)

    async def forget(self, *, session_ids: list[int] = (), account_ids: list[int] = ()) -> None:
        """Drop cached sessions here and on every node (after sign-out, revocation, renames, deletion)."""
        self.sessions.forget(session_ids=list(session_ids), account_ids=list(account_ids))
        if self.bus is not None:
            try:
                await self.bus.publish(SESSIONS, {"sessions": list(session_ids),
                                                          "accounts": list(account_ids)})
            except Exception:
                # Revoked in Postgres already; other nodes drop it within auth.session_cache_ttl.
                log.warning("session invalidation not published", exc_info=True)

    async def on_message(self, message: dict) -> None:
        def ints(key: str) -> list[int]:
            values = message.get(key)
            return [v for v in values if isinstance(v, int)] if isinstance(values, list) else []

        self.sessions.forget(session_ids=ints("sessions"), account_ids=ints("accounts"))

    def send_later(self, message: Message) -> None:
        """Send without holding up the response, so its timing says nothing about the address."""
        task = asyncio.get_running_loop().create_task(self._send(message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, message: Message) -> None:
        try:
            await self.mailer.send(message)
        except MailError:
            log.warning("mail not sent", extra={"template": message.tag}, exc_info=True)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for mail in flight (shutdown, and tests reading the outbox)."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=timeout)

    async def close(self) -> None:
        await self.drain()
        await self.mailer.close()



AUTH: web.AppKey[AuthService] = web.AppKey("auth", AuthService)


def region(request: web.Request) -> str:
    return client_region(request, request.app[CONFIG]["http.trusted_proxies"])


def link_base(request: web.Request) -> str:
    config = request.app[CONFIG]
    # Outside dev the Host header is never trusted for links: a forged one would mail out
    # a valid token pointing at someone else's site.
    if config["http.public_url"] or not config.dev:
        return config.public_url
    return f"{request.scheme}://{request.host}"
