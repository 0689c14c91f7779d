"""One page file served with the page headers: a strict CSP (every script is a
same-origin file, no inline script runs, so chat text that slips through
escaping still cannot execute), no caching, no sniffing.  ``web.routes``
maps URLs to pages with it; a feature that answers a URL with a page (the
recorder's episode list, for browsers) uses it too.
"""

from __future__ import annotations

from aiohttp import web

from . import STATIC_DIR

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'"
)


def page_handler(filename: str):
    async def handler(request: web.Request) -> web.StreamResponse:
        path = STATIC_DIR / filename
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(
            path,
            headers={
                "Content-Security-Policy": CSP,
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
            },
        )

    return handler
