"""HTTP side of identity: magic links, sessions, /api/me, API tokens, gate resolvers.

Routes
  POST   /auth/magic-link      {"email"} -> 202, the same answer for every address
  POST   /auth/confirm         {"token", "age_confirmed"?} -> session cookies
  POST   /auth/sign-out        revoke this session
  GET    /api/me               the signed-in account (401 not_signed_in)
  PATCH  /api/me               {"display_name"}
  GET    /api/me/events        this account's sign-in audit
  GET    /api/sessions         live sessions;  DELETE /api/sessions/{id} revokes one
  GET    /api/tokens           the owner's API tokens
  POST   /api/tokens           {"room", "role", "ttl"?, "label"?} -> the token, shown once
  DELETE /api/tokens/{id}      revoke
  POST   /api/rooms/{slug}/invitations       host: invite a co-host {"ttl"?, "label"?} -> link, shown once
  GET    /api/rooms/{slug}/invitations       host: the room's invitations and their co-hosts
  DELETE /api/rooms/{slug}/invitations/{id}  host: revoke an invitation and its co-host
  POST   /api/invitations/accept             {"invitation", "name"?} -> the co-host's host token

The gate learns two identity resolvers from here (session cookie, then the
anonymous-viewer cookie); they are registered once the gate exists, in a
cleanup context that runs after the app's services context.
"""

from __future__ import annotations

import logging
import secrets as pysecrets
import unicodedata
from typing import AsyncIterator

from aiohttp import web

from .. import config as configmod
from .. import names
from ..channels import SESSIONS
from ..errors import ApiError, json_response, path_id, read_json
from ..gate import ROLE_RANK, Admission, Entry, Identity
from ..keys import BUS, CONFIG, DB, GATE
from ..mail import make_mailer, render
from ..privacy.region import client_ip
from ..wire import NAME_MAX
from ..rooms import directory
from . import accounts, events, links, ratelimit, sessions, tokens
from .csrf import csrf_guard, require_same_origin
from .service import AUTH, AuthService, link_base, region
from .sessions_web import (anonymous_identity, clear_session_cookies, current_session, require_session,
                           session_identity, set_anon_cookie, set_session_cookies)

log = logging.getLogger("odsmedia.auth")

MAX_TOKEN_TTL = 365 * 86400.0
MAX_INVITATION_TTL = 7 * 86400.0


# ---- magic links ------------------------------------------------------------------------

LINK_SENT = {
    "status": "sent",
    "message": "If this address can receive mail, a sign-in link is on its way. It works once and expires soon.",
}


async def request_link(request: web.Request) -> web.Response:
    require_same_origin(request)
    body = await read_json(request, limit=4096)
    email = accounts.normalize_email(body.get("email"))
    config = request.app[CONFIG]
    svc = request.app[AUTH]
    bus = request.app[BUS]
    window = config["auth.link_rate_window"]
    network = ratelimit.network_of(client_ip(request, config["http.trusted_proxies"]))
    wait = max(
        await ratelimit.hit(bus.redis, bus.key("rl", "link", "net", ratelimit.opaque(svc.secret, network)),
                            limit=config["auth.link_rate_per_network"], window=window, fallback=svc.local_limits),
        await ratelimit.hit(bus.redis, bus.key("rl", "link", "addr",
                                               ratelimit.opaque(svc.secret, ratelimit.mailbox_of(email))),
                            limit=config["auth.link_rate_per_address"], window=window, fallback=svc.local_limits),
    )
    if wait:
        err = ApiError(429, "rate_limited", "too many sign-in links requested; try again later",
                       retry_after=int(wait))
        err.headers["Retry-After"] = str(int(wait))
        raise err
    # Whether an account exists is never consulted: the answer, the work done and the
    # message sent are the same for every address (a first sign-in creates the account).
    token = await links.create(request.app[DB], email, config["auth.link_ttl"])
    url = f"{link_base(request)}/auth/confirm#token={token}"
    svc.send_later(render("magic_link", email, url=url, minutes=max(1, round(config["auth.link_ttl"] / 60))))
    return json_response(LINK_SENT, status=202)


_LINK_MESSAGES = {
    "invalid_link": "this sign-in link is not valid; request a new one",
    "link_used": "this sign-in link was already used; request a new one",
    "link_expired": "this sign-in link has expired; request a new one",
}


async def confirm_link(request: web.Request) -> web.Response:
    require_same_origin(request)
    body = await read_json(request, limit=4096)
    token = body.get("token")
    age_confirmed = body.get("age_confirmed") is True
    config = request.app[CONFIG]
    svc = request.app[AUTH]
    where = region(request)
    db = request.app[DB]
    new_account = False
    try:
        async with db.acquire() as conn:
            async with conn.transaction():
                link = await links.check(conn, token)
                row = await accounts.age_status(conn, link.email)
                if row is None or not row["aged"]:
                    # The policy's children clause: nobody gets an account without saying they are 16+.
                    if not age_confirmed:
                        raise ApiError(400, "age_confirmation_required",
                                       "confirm that you are 16 or older to create your account", new_account=True)
                    if row is None:
                        account = await accounts.create_verified(conn, link.email)
                        new_account = True
                    else:
                        account = await accounts.confirm(conn, row["id"], age_confirmed=True)
                else:
                    account = await accounts.confirm(conn, row["id"])
                await links.consume(conn, link)
                session_token, session_id = await sessions.create(
                    conn, account.id, absolute_seconds=config["auth.session_absolute"], region=where
                )
                await events.record(conn, "sign_in", region=where, account_id=account.id, session_id=session_id)
    except links.LinkError as exc:
        known = await accounts.by_email(db, exc.email) if exc.email else None
        kind = "link_expired" if exc.reason == "link_expired" else "link_failed"
        await events.record(db, kind, region=where, account_id=known.id if known else None)
        raise ApiError(400, exc.reason, _LINK_MESSAGES[exc.reason]) from None
    response = json_response({
        "account": account.public(),
        "new_account": new_account,
        "csrf_token": sessions.csrf_token(svc.secret, session_token),
    })
    set_session_cookies(response, config, svc.secret, session_token)
    return response


async def sign_out(request: web.Request) -> web.Response:
    found = await current_session(request)
    if found is not None:
        if await sessions.revoke(request.app[DB], found.id, account_id=found.account_id):
            await request.app[AUTH].forget(session_ids=[found.id])
            await events.record(request.app[DB], "sign_out", region=region(request),
                                account_id=found.account_id, session_id=found.id)
    response = json_response({"status": "signed_out"})
    clear_session_cookies(response, request.app[CONFIG])
    return response


# ---- the signed-in account --------------------------------------------------------------

async def _me_body(request: web.Request, found: sessions.Session) -> dict:
    account = await accounts.get(request.app[DB], found.account_id)
    if account is None:
        raise ApiError(401, "not_signed_in", "this account no longer exists")
    svc = request.app[AUTH]
    body = account.public()
    body["csrf_token"] = sessions.csrf_token(svc.secret, request.cookies[sessions.COOKIE])
    for extra in svc.me_extras:
        body.update(await extra(request, account.id))
    return body


async def get_me(request: web.Request) -> web.Response:
    return json_response(await _me_body(request, await require_session(request)))


async def patch_me(request: web.Request) -> web.Response:
    found = await require_session(request)
    body = await read_json(request, limit=4096)
    unknown = set(body) - {"display_name"}
    if unknown:
        raise ApiError(400, "unknown_field", f"cannot change {', '.join(sorted(unknown))}")
    if "display_name" in body:
        name = accounts.clean_display_name(body["display_name"])
        await accounts.set_display_name(request.app[DB], found.account_id, name)
        # Cached sessions carry the display name the gate hands to rooms.
        await request.app[AUTH].forget(account_ids=[found.account_id])
    return json_response(await _me_body(request, found))


async def my_events(request: web.Request) -> web.Response:
    found = await require_session(request)
    return json_response({"events": await events.recent(request.app[DB], found.account_id)})


async def list_sessions(request: web.Request) -> web.Response:
    found = await require_session(request)
    rows = await sessions.list_for(request.app[DB], found.account_id,
                                   idle_seconds=request.app[CONFIG]["auth.session_idle"])
    for row in rows:
        row["current"] = row["id"] == found.id
    return json_response({"sessions": rows})


def _path_id(request: web.Request, name: str = "id") -> int:
    return path_id(request, name, "not_found", "no such item")


async def revoke_session(request: web.Request) -> web.Response:
    found = await require_session(request)
    target = _path_id(request)
    db = request.app[DB]
    if not await sessions.revoke(db, target, account_id=found.account_id):
        raise ApiError(404, "session_not_found", "no such live session of yours")
    await request.app[AUTH].forget(session_ids=[target])
    await events.record(db, "revoked", region=region(request), account_id=found.account_id, session_id=target)
    return web.Response(status=204)


# ---- API tokens ---------------------------------------------------------------------------

async def list_tokens(request: web.Request) -> web.Response:
    found = await require_session(request)
    return json_response({"tokens": await tokens.list_for(request.app[DB], found.account_id)})


def _label(body: dict) -> str:
    label = body.get("label", "")
    if not isinstance(label, str) or len(label) > 80 or any(unicodedata.category(c) == "Cc" for c in label):
        raise ApiError(400, "invalid_label", "label must be a string of at most 80 characters, "
                                             "without control characters")
    return label


def _ttl(body: dict, default: float, maximum: float) -> float:
    try:
        ttl = configmod._duration(body.get("ttl", default))
    except ValueError:
        raise ApiError(400, "invalid_ttl", "ttl must be seconds or a duration such as 1h or 30d") from None
    if not 0 < ttl <= maximum:
        raise ApiError(400, "invalid_ttl", f"ttl must be positive and at most {int(maximum // 86400)} days")
    return ttl


async def create_token(request: web.Request) -> web.Response:
    found = await require_session(request)
    body = await read_json(request, limit=4096)
    config = request.app[CONFIG]
    role = body.get("role")
    if role not in tokens.ROLES:
        raise ApiError(400, "invalid_role", "role must be host, moderator or viewer")
    slug = body.get("room")
    if not isinstance(slug, str):
        raise ApiError(400, "invalid_room", "room must be a room slug")
    label = _label(body)
    ttl = _ttl(body, config["auth.token_ttl"], MAX_TOKEN_TTL)
    db = request.app[DB]
    room = await directory.require(db, slug)
    # Nobody hands out more than they hold: a host may mint any role, a moderator
    # moderator or viewer tokens, anyone else viewer tokens (the gate still checks plans).
    own = await request.app[GATE].role_of(Identity(account_id=found.account_id), room)
    if ROLE_RANK[own] < ROLE_RANK[role]:
        raise ApiError(403, "role_too_high", f"you are {own} in this room and cannot mint a {role} token")
    token, token_id = await tokens.mint(db, room_id=room.id, role=role, ttl_seconds=ttl,
                                        account_id=found.account_id, label=label)
    listed = next(t for t in await tokens.list_for(db, found.account_id) if t["id"] == token_id)
    return json_response({**listed, "token": token}, status=201)


async def delete_token(request: web.Request) -> web.Response:
    found = await require_session(request)
    if not await tokens.revoke(request.app[DB], _path_id(request), account_id=found.account_id):
        raise ApiError(404, "token_not_found", "no such live token of yours")
    return web.Response(status=204)


# ---- co-host invitations ---------------------------------------------------------------------

async def _room_host(request: web.Request) -> Admission:
    """Whoever asks (bearer host token, or the room owner's session) must be a host of the room."""
    admission = await request.app[GATE].admit(request, request.match_info["slug"], Entry.JOIN)
    if admission.role != "host":
        raise ApiError(403, "not_the_host", "only a host of this room may invite co-hosts")
    return admission


async def create_invitation(request: web.Request) -> web.Response:
    admission = await _room_host(request)
    body = await read_json(request, limit=4096)
    label = _label(body)
    ttl = _ttl(body, request.app[CONFIG]["auth.invitation_ttl"], MAX_INVITATION_TTL)
    identity = admission.identity
    db = request.app[DB]
    invitation, invitation_id = await tokens.invite(
        db, room_id=admission.room.id, ttl_seconds=ttl, account_id=identity.account_id,
        parent_id=identity.token.token_id if identity.token is not None else None, label=label)
    listed = next(i for i in await tokens.invitations(db, admission.room.id) if i["id"] == invitation_id)
    # The invitation rides in the fragment: it never reaches a server log or a Referer.
    url = f"{link_base(request)}/rooms/{admission.room.slug}/host#invite={invitation}"
    return json_response({**listed, "invitation": invitation, "url": url}, status=201)


async def list_invitations(request: web.Request) -> web.Response:
    admission = await _room_host(request)
    return json_response({"invitations": await tokens.invitations(request.app[DB], admission.room.id)})


async def revoke_invitation(request: web.Request) -> web.Response:
    admission = await _room_host(request)
    invitation_id = path_id(request, "id", "invitation_not_found", "no such invitation in this room")
    if not await tokens.revoke_invitation(request.app[DB], admission.room.id, invitation_id):
        raise ApiError(404, "invitation_not_found", "no such live invitation in this room")
    return web.Response(status=204)


async def accept_invitation(request: web.Request) -> web.Response:
    body = await read_json(request, limit=4096)
    name = body.get("name")
    if name is not None:
        try:
            name = names.display_name(name, max_length=NAME_MAX)
        except names.InvalidName as exc:
            raise ApiError(400, "invalid_display_name", str(exc)) from None
    db = request.app[DB]
    try:
        token, token_id, slug = await tokens.accept(db, body.get("invitation"),
                                                       ttl_seconds=request.app[CONFIG]["auth.cohost_ttl"],
                                                       name=name or "")
    except tokens.InvitationError as exc:
        raise ApiError(400, exc.reason, INVITATION_REFUSALS[exc.reason]) from None
    return json_response({"token": token, "subject": f"t:{token_id}", "room": slug, "role": "host",
                          "name": name}, status=201)


INVITATION_REFUSALS = {
    "invalid_invitation": "this invitation link is not valid; ask the host for a new one",
    "invitation_used": "this invitation was already used; ask the host for a new one",
    "invitation_expired": "this invitation expired; ask the host for a new one",
    "invitation_revoked": "the host withdrew this invitation",
}


# ---- wiring -------------------------------------------------------------------------------

def setup(app: web.Application) -> None:
    config = app[CONFIG]
    secret = config["secret.key"]
    if not secret:
        # make_app without a key (some tools): cookies then only live as long as the process.
        log.warning("secret.key is empty; signing with a per-process random key")
        secret = pysecrets.token_urlsafe(48)
    app[AUTH] = AuthService(config=config, mailer=make_mailer(config), secret=secret,
                                        sessions=sessions.SessionCache(config["auth.session_cache_ttl"]))
    app.middlewares.append(csrf_guard)
    app.on_response_prepare.append(set_anon_cookie)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Runs after the services context: the gate exists now.
        gate = app[GATE]
        gate.resolvers.append(session_identity)
        gate.resolvers.append(anonymous_identity)
        svc = app[AUTH]
        svc.bus = app[BUS]
        unsubscribe = await app[BUS].subscribe(SESSIONS, svc.on_message)
        yield
        await unsubscribe()
        await svc.close()

    app.cleanup_ctx.append(lifecycle)
    r = app.router
    r.add_post("/auth/magic-link", request_link)
    r.add_post("/auth/confirm", confirm_link)
    r.add_post("/auth/sign-out", sign_out)
    r.add_get("/api/me", get_me)
    r.add_patch("/api/me", patch_me)
    r.add_get("/api/me/events", my_events)
    r.add_get("/api/sessions", list_sessions)
    r.add_delete("/api/sessions/{id}", revoke_session)
    r.add_get("/api/tokens", list_tokens)
    r.add_post("/api/tokens", create_token)
    r.add_delete("/api/tokens/{id}", delete_token)
    r.add_post("/api/rooms/{slug}/invitations", create_invitation)
    r.add_get("/api/rooms/{slug}/invitations", list_invitations)
    r.add_delete("/api/rooms/{slug}/invitations/{id}", revoke_invitation)
    r.add_post("/api/invitations/accept", accept_invitation)
