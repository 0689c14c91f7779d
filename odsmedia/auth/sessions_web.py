"""Who is signed in: the session cookie, the anonymous-viewer cookie, and their gate resolvers.

``current_session`` / ``require_session`` are what other features (billing,
privacy) call to find the signed-in account; ``session_identity`` and
``anonymous_identity`` are the gate resolvers auth registers; the cookie
helpers set and clear what a sign-in or sign-out changes.
"""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from ..errors import ApiError
from ..gate import Identity
from ..keys import CONFIG, DB
from . import anonymous, sessions
from .csrf import is_cross_origin
from .service import AUTH

_SESSION = web.RequestKey("ods_session", object)     # the resolved Session, or None
_NEW_ANON = web.RequestKey("ods_new_anon", str)      # anonymous id to set in a cookie


async def current_session(request: web.Request) -> sessions.Session | None:
    if _SESSION in request:
        return request[_SESSION]
    token = request.cookies.get(sessions.COOKIE, "")
    found = None
    if token:
        cache = request.app[AUTH].sessions
        found = cache.get(token)
        if found is None:
            config = request.app[CONFIG]
            found = await sessions.resolve(request.app[DB], token, idle_seconds=config["auth.session_idle"])
            if found is not None:
                cache.put(token, found)
    request[_SESSION] = found
    return found


async def require_session(request: web.Request) -> sessions.Session:
    found = await current_session(request)
    if found is None:
        raise ApiError(401, "not_signed_in", "sign in first")
    return found


async def session_identity(request: web.Request) -> Identity | None:
    # A cross-site page may open a WebSocket to us with the user's cookie attached; such a
    # handshake gets no session identity (WebSockets have no CORS to stop it otherwise).
    if request.headers.get("Upgrade", "").lower() == "websocket" and is_cross_origin(request):
        return None
    found = await current_session(request)
    if found is None:
        return None
    return Identity(account_id=found.account_id, display_name=found.display_name, session_id=found.id)


async def anonymous_identity(request: web.Request) -> Identity | None:
    secret = request.app[AUTH].secret
    anon_id = anonymous.verify(secret, request.cookies.get(anonymous.COOKIE, ""))
    if anon_id is None:
        # Only reads (page loads, WebSocket joins, playlists) mint an id; a write without the
        # cookie stays identity-less so bans cannot be dodged by dropping cookies.
        if request.method not in ("GET", "HEAD"):
            return None
        anon_id = anonymous.new_id()
        request[_NEW_ANON] = anon_id
    return Identity(anon_id=anon_id)


def _is_room_page(request: web.Request, response: web.StreamResponse) -> bool:
    return (
        request.method == "GET"
        and request.path.startswith("/rooms/")
        and response.status == 200
        and response.content_type == "text/html"
        and sessions.COOKIE not in request.cookies
        and anonymous.verify(request.app[AUTH].secret, request.cookies.get(anonymous.COOKIE, "")) is None
    )


async def set_anon_cookie(request: web.Request, response: web.StreamResponse) -> None:
    # Runs after aiohttp has turned response.cookies into headers (WebSocket handshakes
    # included), so the header is added directly. The value is url-safe base64 and a dot.
    anon_id = request.get(_NEW_ANON)
    if anon_id is None and _is_room_page(request, response):
        # A viewer's first page load: WebSocket joins happen after their handshake response is
        # sent, so without this the id minted at a join could never be stored in the browser.
        anon_id = anonymous.new_id()
    if anon_id:
        value = anonymous.sign(request.app[AUTH].secret, anon_id)
        secure = "" if request.app[CONFIG].dev else "; Secure"
        response.headers.add(
            "Set-Cookie",
            f"{anonymous.COOKIE}={value}; Max-Age={anonymous.MAX_AGE}; Path=/; HttpOnly; SameSite=Lax{secure}",
        )


def set_session_cookies(response: web.StreamResponse, config: Config, secret: str, token: str) -> None:
    secure = not config.dev
    max_age = int(config["auth.session_absolute"])
    response.set_cookie(sessions.COOKIE, token, max_age=max_age, path="/", httponly=True, secure=secure,
                        samesite="Lax")
    # Readable by our scripts so they can echo it in X-CSRF-Token.
    response.set_cookie(sessions.CSRF_COOKIE, sessions.csrf_token(secret, token), max_age=max_age, path="/",
                        httponly=False, secure=secure, samesite="Lax")


def clear_session_cookies(response: web.StreamResponse, config: Config) -> None:
    for name in (sessions.COOKIE, sessions.CSRF_COOKIE):
        response.del_cookie(name, path="/", secure=not config.dev, samesite="Lax")
