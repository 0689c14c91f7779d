"""Serves the pages and their assets.

Pages are plain HTML files; each page's script reads what it needs (room
slug, episode id) from the URL.  Responses carry a strict CSP: every script
is a same-origin file, no inline script runs, so chat text that slips
through escaping still cannot execute.
"""

from __future__ import annotations

from aiohttp import web

from . import STATIC_DIR
from .pages import page_handler

# URL pattern -> page file under static/. (/rooms/{slug}/episodes is both the
# JSON API and the replay page: recorder.routes negotiates on Accept.)
PAGES: dict[str, str] = {
    "/": "index.html",
    "/rooms/{slug}": "viewer.html",
    "/rooms/{slug}/host": "host.html",
    "/episodes/{episode_id}/watch": "replay.html",
    "/signin": "signin.html",
    "/auth/confirm": "confirm.html",
    "/account": "account.html",
    "/plans": "plans.html",
    "/orgs/{org_id}": "org.html",
}


async def favicon(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "favicon.svg", headers={"Content-Type": "image/svg+xml",
                                                                "Cache-Control": "max-age=86400"})


def setup(app: web.Application) -> None:
    for pattern, filename in PAGES.items():
        app.router.add_get(pattern, page_handler(filename))
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
