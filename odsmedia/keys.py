"""Typed keys for what the aiohttp application holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

if TYPE_CHECKING:
    from .bus import Bus
    from .config import Config

CONFIG: web.AppKey["Config"] = web.AppKey("config")
DB: web.AppKey[asyncpg.Pool] = web.AppKey("db", asyncpg.Pool)
BUS: web.AppKey["Bus"] = web.AppKey("bus")
# Each feature's own object has its own typed key, defined by the module that owns it
# (``rooms.sfu.SFU``, ``auth.service.AUTH``, ``chat.feature.CHAT``, ``billing.service.BILLING``,
# ``recorder.recorder.RECORDER``, ``privacy.requestlog.REQUEST_LOG``).

if TYPE_CHECKING:
    from .gate import Gate

GATE: web.AppKey["Gate"] = web.AppKey("gate")

# The admitted identity's subject, kept by the request log (never the address).
SUBJECT: web.RequestKey[str] = web.RequestKey("subject", str)
