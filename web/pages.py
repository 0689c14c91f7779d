"""One page file served with the page headers: a strict CSP (every script is a
same-origin file, no inline script runs, so chat text that slips through
escaping still cannot execute), no caching, no sniffing.  ``web.routes``
maps URLs to pages with it; a feature that answers a URL with a page (the
recorder's episode list, for browsers) uses it too.
"""

from __future__ import annotations

import html

from aiohttp import web

from . import STATIC_DIR

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'"
)


PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def page_handler(filename: str):
    async def handler(request: web.Request) -> web.StreamResponse:
        path = STATIC_DIR / filename
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers=PAGE_HEADERS)

    return handler


ERROR_TEXT = {
    404: ("Page not found", "There is nothing at this address. Check the link, or start from the home page."),
    405: ("Not allowed", "This address does not take that kind of request."),
}


def error_page(status: int, reason: str) -> web.Response:
    """An HTML error for a page URL (API URLs answer JSON)."""
    title, text = ERROR_TEXT.get(status, (reason or "Error", "Something went wrong. Try again in a moment."))
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} · ODS Media</title>"
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/static/style.css"></head><body>'
        '<header><h1><a href="/">ODS Media</a></h1></header>'
        f'<main><h2 data-status="{status}">{html.escape(title)}</h2><p>{html.escape(text)}</p>'
        '<p><a href="/">Go to the home page</a></p></main></body></html>'
    )
    return web.Response(text=body, status=status, content_type="text/html", headers=PAGE_HEADERS)
