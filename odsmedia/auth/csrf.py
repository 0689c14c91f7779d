"""CSRF defences.

Cookie-authenticated state changes need the double-submit token (see
``sessions.csrf_token``) in ``X-CSRF-Token``; requests carrying a bearer
token that authenticates are not cookie-authenticated and skip it.  Any
other Authorization header (``Authorization: x``, an unknown or revoked
token) does not: the cookie is what would act, so the cookie is checked.
The two sign-in endpoints run before there is a session, so they check where
the request came from instead (Sec-Fetch-Site, then Origin) to stop login
CSRF.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import ApiError
from ..keys import CONFIG, DB
from . import sessions, tokens
from .service import AUTH

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Endpoints that are not cookie-authenticated: sign-in (origin-checked) and Stripe's webhook (signed).
EXEMPT_PATHS = frozenset({"/auth/magic-link", "/auth/confirm", "/billing/webhook"})


def allowed_origins(request: web.Request) -> set[str]:
    config = request.app[CONFIG]
    origins = {f"{request.scheme}://{request.host}"}
    if config["http.public_url"]:
        origins.add(config.public_url)
    return origins


def is_cross_origin(request: web.Request) -> bool:
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    return origin is not None and origin not in allowed_origins(request)


def require_same_origin(request: web.Request) -> None:
    if is_cross_origin(request):
        raise ApiError(403, "cross_origin", "this request must come from this site's own pages")


@web.middleware
async def csrf_guard(request: web.Request, handler):
    if request.method not in SAFE_METHODS and request.path not in EXEMPT_PATHS:
        token = request.cookies.get(sessions.COOKIE)
        if token and not await _bearer_authenticates(request):
            secret = request.app[AUTH].secret
            presented = request.headers.get(sessions.CSRF_HEADER, "")
            if request.headers.get("Sec-Fetch-Site") == "cross-site" or not sessions.csrf_valid(
                secret, token, presented
            ):
                raise ApiError(403, "csrf_failed",
                               f"a signed-in change needs the {sessions.CSRF_HEADER} header from this site")
    return await handler(request)


async def _bearer_authenticates(request: web.Request) -> bool:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return False
    return await tokens.resolve(request.app[DB], value.strip()) is not None
