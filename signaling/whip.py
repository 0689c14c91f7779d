"""WHIP (RFC 9725) publishing and WHEP playback, one resource model.

POST an SDP offer -> 201 Created, ``Location`` of the session, the SDP
answer.  DELETE on the Location ends the session.  OPTIONS answers CORS
preflights.  Candidates travel in the SDP (no trickle: PATCH gets 405).
WHIP needs a host bearer token; WHEP admits like the viewer page (viewer
token, cookies, or nothing in a public room) and answers 409
``nothing_published`` when the room has nothing live.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from aiohttp import web

from odsmedia.abuse import ABUSE, Held
from odsmedia.analytics.sink import audience
from odsmedia.errors import ApiError
from odsmedia.gate import Admission, Entry
from odsmedia.keys import CONFIG, GATE
from odsmedia.reauth import REAUTH, Reauthorizer, credential_of
from odsmedia.rooms.errors import SfuError
from odsmedia.rooms.participant import Participant
from odsmedia.rooms.room import Room
from odsmedia.rooms.sfu import SFU
from odsmedia.rooms.transport import MAX_SDP, Transport

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Expose-Headers": "Location, Link",
    "Access-Control-Max-Age": "600",
}


def _with_cors(exc: ApiError) -> ApiError:
    exc.headers.update(CORS)
    return exc


async def _read_sdp(request: web.Request) -> str:
    if request.content_type != "application/sdp":
        raise SfuError(415, "unsupported_media_type", "the body must be application/sdp")
    if request.content_length is not None and request.content_length > MAX_SDP:
        raise SfuError(413, "body_too_large", f"SDP over {MAX_SDP} bytes")
    raw = await request.content.read(MAX_SDP + 1)
    if len(raw) > MAX_SDP:
        raise SfuError(413, "body_too_large", f"SDP over {MAX_SDP} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SfuError(400, "invalid_sdp", "SDP is not UTF-8") from None


def _ice_links(request: web.Request) -> list[str]:
    config = request.app[CONFIG]
    links = [f'<{url}>; rel="ice-server"' for url in config["ice.stun_urls"]]
    for url in config["ice.turn_urls"]:
        links.append(f'<{url}>; rel="ice-server"; username="{config["ice.turn_username"]}"; '
                     f'credential="{config["ice.turn_credential"]}"; credential-type="password"')
    return links


def _find(request: web.Request, via: str) -> tuple[Room, Participant, Transport]:
    found = request.app[SFU].find_session(request.match_info["slug"], request.match_info["session"], via)
    if found is None:
        raise SfuError(404, "unknown_session", "no such session")
    return found


def _created(request: web.Request, via: str, transport: Transport) -> web.Response:
    response = web.Response(status=201, text=transport.local_sdp(), content_type="application/sdp",
                            headers={**CORS, "Location": f"/rooms/{request.match_info['slug']}/{via}/{transport.id}"})
    for link in _ice_links(request):
        response.headers.add("Link", link)
    return response


async def whip_post(request: web.Request) -> web.Response:
    try:
        if not request.headers.get("Authorization"):
            # RFC 9725 section 4.5: WHIP authenticates with a bearer token.
            exc = SfuError(401, "token_required", "WHIP needs 'Authorization: Bearer <host token>'")
            exc.headers["WWW-Authenticate"] = 'Bearer realm="odsmedia"'
            raise exc
        admission = await request.app[GATE].admit(request, request.match_info["slug"], Entry.PUBLISH)
        offer = await _read_sdp(request)
        ending = SessionEnding(request.app[REAUTH], admission)
        room, participant = await request.app[SFU].join(
            admission.room, subject=admission.identity.subject,
            name=admission.identity.display_name or "WHIP publisher", role=admission.role, via="whip",
            on_leave=ending.left)
        ending.watch(room, participant)
        try:
            transport = await room.publish(participant, offer)
        except BaseException:
            await room.leave(participant, reason="publish_failed")
            raise
        return _created(request, "whip", transport)
    except ApiError as exc:
        raise _with_cors(exc) from None


async def whep_post(request: web.Request) -> web.Response:
    try:
        admission = await request.app[GATE].admit(request, request.match_info["slug"], Entry.PLAY)
        offer = await _read_sdp(request)
        sfu = request.app[SFU]
        live = sfu.get(admission.room.slug)
        if live is None or not live.publications:
            raise SfuError(409, "nothing_published", "nothing is published in this room yet")
        view = audience(request.app).live_view(request, admission.room.id, admission.identity.subject,
                                               admission.role, "webrtc")
        # Held while the session lives: released when the participant leaves the room.
        lease = request.app[ABUSE].acquire(Held.WHEP, request)
        ending = SessionEnding(request.app[REAUTH], admission, lease.release,
                               *([view.end] if view is not None else []))
        try:
            room, participant = await sfu.join(
                admission.room, subject=admission.identity.subject,
                name=admission.identity.display_name or "WHEP viewer", role=admission.role, via="whep",
                on_leave=ending.left)
        except BaseException:
            lease.release()
            raise
        ending.watch(room, participant)
        try:
            transport = await room.subscribe(participant, None, offer=offer)
        except BaseException:
            await room.leave(participant, reason="play_failed")
            raise
        if view is not None:
            view.start()
        return _created(request, "whep", transport)
    except ApiError as exc:
        raise _with_cors(exc) from None


class SessionEnding:
    """A WHIP/WHEP session ends when what admitted it ends (``odsmedia.reauth``): a revoked
    or expired token, a signed-out session, a deleted account.  Its participant leaves the
    room with that reason, which closes its transport."""

    def __init__(self, reauth: Reauthorizer, admission: Admission, *also: Callable[[], None]) -> None:
        self.reauth = reauth
        self.credential = credential_of(admission.identity)
        self.on_left = list(also)
        self.unwatch: Callable[[], None] = lambda: None

    def watch(self, room: Room, participant: Participant) -> None:
        def ended(reason: str) -> None:
            asyncio.ensure_future(room.leave(participant, reason=reason))

        self.unwatch = self.reauth.watch(self.credential, ended)

    def left(self) -> None:
        self.unwatch()
        for done in self.on_left:
            done()


def _delete(via: str):
    async def handler(request: web.Request) -> web.Response:
        try:
            room, participant, transport = _find(request, via)
            if participant.subject != "none" or request.headers.get("Authorization"):
                # A session made with credentials is ended only by the same identity.
                identity = await request.app[GATE].identify(request)
                if identity.subject != participant.subject:
                    raise SfuError(403, "not_your_session", "this session belongs to someone else")
            await transport.close()
            return web.Response(status=200, headers=CORS)
        except ApiError as exc:
            raise _with_cors(exc) from None

    return handler


async def options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={**CORS, "Accept-Post": "application/sdp"})


async def patch(request: web.Request) -> web.Response:
    exc = SfuError(405, "trickle_not_supported", "candidates travel in the SDP; trickle ICE is not supported")
    exc.headers["Allow"] = "DELETE, OPTIONS"
    raise _with_cors(exc)


def setup_routes(app: web.Application) -> None:
    for via, post in (("whip", whip_post), ("whep", whep_post)):
        app.router.add_post(f"/rooms/{{slug}}/{via}", post)
        app.router.add_route("OPTIONS", f"/rooms/{{slug}}/{via}", options)
        app.router.add_delete(f"/rooms/{{slug}}/{via}/{{session}}", _delete(via))
        app.router.add_route("OPTIONS", f"/rooms/{{slug}}/{via}/{{session}}", options)
        app.router.add_route("PATCH", f"/rooms/{{slug}}/{via}/{{session}}", patch)
