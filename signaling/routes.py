"""Signaling routes: the WebSocket, WHIP and WHEP."""

from __future__ import annotations

from aiohttp import web

from . import whip, ws


def setup(app: web.Application) -> None:
    app.router.add_get("/rooms/{slug}/ws", ws.websocket)
    whip.setup_routes(app)
    app.on_shutdown.append(ws.close_all)
