"""Wires the privacy feature: request log middleware, flusher, retention sweep."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from aiohttp import web

from ..keys import CONFIG, DB
from . import retention, rights
from .requestlog import REQUEST_LOG, RequestLog


def setup(app: web.Application) -> None:
    config = app[CONFIG]
    request_log = RequestLog(config["http.trusted_proxies"])
    app[REQUEST_LOG] = request_log
    app.middlewares.append(request_log.middleware)
    rights.setup_routes(app)

    async def background(app: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(request_log.run(app[DB]), name="request-log-flush"),
            asyncio.create_task(
                retention.run(
                    app[DB],
                    config["privacy.sweep_interval"],
                    request_log_days=config["privacy.request_log_days"],
                    session_event_days=config["privacy.session_event_days"],
                ),
                name="retention-sweep",
            ),
        ]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await request_log.flush(app[DB])

    app.cleanup_ctx.append(background)
