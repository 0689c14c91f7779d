"""WHIP (RFC 9725) publishing and WHEP playback, one resource model.

POST an SDP offer -> 201 Created, ``Location`` of the session, its
``ETag``, the SDP answer.  DELETE on the Location ends the session.
PATCH with an ``application/trickle-ice-sdpfrag`` body trickles client
candidates (RFC 9725 section 4.3.1, RFC 8840); an ICE restart (``If-Match:
*`` or new credentials) answers 422, the RFC's answer when only one of the
two is supported: such a client restarts by a new POST.  OPTIONS answers
CORS preflights.
WHIP needs a host bearer token; WHEP admits like the viewer page (viewer
token, cookies, or nothing in a public room) and answers 409
``nothing_published`` when the room has nothing live.
A POST that reaches a node (or worker) other than the room's origin is
answered 307 Temporary Redirect to the same path on the origin's node URL
(RFC 9725 section 4.5: clients follow it with the same method and body),
with the ``room_on_other_node`` JSON body naming ``node_url`` for clients
that do not follow redirects.
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
from odsmedia.media.turn import ice_servers
from odsmedia.reauth import REAUTH, Reauthorizer, credential_of
from odsmedia.rooms.errors import SfuError
from odsmedia.rooms.participant import Participant
from odsmedia.rooms.room import Room
from odsmedia.rooms.sfu import SFU
from odsmedia.rooms.transport import MAX_SDP, Transport

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag",
    "Access-Control-Max-Age": "600",
}


def _with_cors(exc: ApiError, request: web.Request | None = None) -> ApiError:
    exc.headers.update(CORS)
    node_url = exc.extra.get("node_url")
    if request is not None and exc.reason == "room_on_other_node" and node_url:
        # Another node serves this room: send the player there (WHIP/WHEP load balancing).
        exc.status = 307
        exc.headers["Location"] = node_url.rstrip("/") + request.path_qs
    return exc


async def _read_sdp(request: web.Request) -> str:
    if request.content_type != "application/sdp":
        raise SfuError(415, "unsupported_media_type", "the body must be application/sdp")
    return await _read_body(request)


async def _read_body(request: web.Request) -> str:
    if request.content_length is not None and request.content_length > MAX_SDP:
        raise SfuError(413, "body_too_large", f"SDP over {MAX_SDP} bytes")
    raw = await request.content.read(MAX_SDP + 1)
    if len(raw) > MAX_SDP:
        raise SfuError(413, "body_too_large", f"SDP over {MAX_SDP} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SfuError(400, "invalid_sdp", "SDP is not UTF-8") from None


def _ice_links(request: web.Request, participant: Participant) -> list[str]:
    return [link for server in ice_servers(request.app[CONFIG], participant.id) for link in server.as_links()]


def _find(request: web.Request, via: str) -> tuple[Room, Participant, Transport]:
    found = request.app[SFU].find_session(request.match_info["slug"], request.match_info["session"], via)
    if found is None:
        raise SfuError(404, "unknown_session", "no such session")
    return found


def _etag(transport: Transport) -> str:
    # One ICE session per resource (no restarts): the server's ufrag names it.
    return f'"{transport.local_ufrag()}"'


def _created(request: web.Request, via: str, participant: Participant, transport: Transport) -> web.Response:
    path = f"/rooms/{request.match_info['slug']}/{via}/{transport.id}"
    # A node with a URL of its own (a worker of `serve --workers`) names itself: the session lives
    # here, and a DELETE or PATCH sent to the shared port could land on another worker.
    node_url = request.app[CONFIG]["http.node_url"]
    location = node_url.rstrip("/") + path if node_url else path
    response = web.Response(status=201, text=transport.local_sdp(), content_type="application/sdp",
                            headers={**CORS, "Location": location, "ETag": _etag(transport)})
    for link in _ice_links(request, participant):
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
        return _created(request, "whip", participant, transport)
    except ApiError as exc:
        raise _with_cors(exc, request) from None


async def whep_post(request: web.Request) -> web.Response:
    try:
        admission = await request.app[GATE].admit(request, request.match_info["slug"], Entry.PLAY)
        offer = await _read_sdp(request)
        sfu = request.app[SFU]
        live = sfu.get(admission.room.slug)
        if live is not None and not live.publications:
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
            if not room.publications:
                # Not live here before this join (nor on another node, or this one would relay it).
                raise SfuError(409, "nothing_published", "nothing is published in this room yet")
            transport = await room.subscribe(participant, None, offer=offer)
        except BaseException:
            await room.leave(participant, reason="play_failed")
            raise
        if view is not None:
            view.start()
        return _created(request, "whep", participant, transport)
    except ApiError as exc:
        raise _with_cors(exc, request) from None


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


async def _owned(request: web.Request, via: str) -> tuple[Room, Participant, Transport]:
    room, participant, transport = _find(request, via)
    if participant.subject != "none" or request.headers.get("Authorization"):
        # A session made with credentials is acted on only by the same identity.
        identity = await request.app[GATE].identify(request)
        if identity.subject != participant.subject:
            raise SfuError(403, "not_your_session", "this session belongs to someone else")
    return room, participant, transport


def _delete(via: str):
    async def handler(request: web.Request) -> web.Response:
        try:
            _, _, transport = await _owned(request, via)
            await transport.close()
            return web.Response(status=200, headers=CORS)
        except ApiError as exc:
            raise _with_cors(exc) from None

    return handler


def _patch(via: str):
    async def handler(request: web.Request) -> web.Response:
        try:
            _, _, transport = await _owned(request, via)
            if request.content_type != "application/trickle-ice-sdpfrag":
                raise SfuError(415, "unsupported_media_type", "the body must be application/trickle-ice-sdpfrag")
            frag = parse_sdpfrag(await _read_body(request))
            if_match = request.headers.get("If-Match")
            if if_match == "*" or (frag.ufrag is not None and frag.ufrag != transport.remote_ufrag()):
                exc = SfuError(422, "ice_restart_not_supported",
                               "ICE restart is not supported: DELETE this session and POST a new offer")
                raise exc
            if if_match is not None and if_match != _etag(transport):
                raise SfuError(412, "etag_mismatch", "If-Match does not name this ICE session")
            for mid, line in frag.candidates:
                await transport.add_candidate({"candidate": line, "sdpMid": mid, "sdpMLineIndex": 0})
            return web.Response(status=204, headers={**CORS, "ETag": _etag(transport)})
        except ApiError as exc:
            raise _with_cors(exc) from None

    return handler


class SdpFrag:
    """The parts of an RFC 8840 SDP fragment a trickle PATCH carries."""

    def __init__(self) -> None:
        self.ufrag: str | None = None
        self.pwd: str | None = None
        self.candidates: list[tuple[str | None, str]] = []   # (mid, "candidate:...")


MAX_CANDIDATES = 64


def parse_sdpfrag(text: str) -> SdpFrag:
    frag = SdpFrag()
    mid: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("a=mid:"):
            mid = line[6:]
        elif line.startswith("a=ice-ufrag:"):
            frag.ufrag = line[12:]
        elif line.startswith("a=ice-pwd:"):
            frag.pwd = line[10:]
        elif line.startswith("a=candidate:"):
            frag.candidates.append((mid, line[2:]))
    if len(frag.candidates) > MAX_CANDIDATES:
        raise SfuError(413, "too_many_candidates", f"at most {MAX_CANDIDATES} candidates per PATCH")
    return frag


async def options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={**CORS, "Accept-Post": "application/sdp"})


def setup_routes(app: web.Application) -> None:
    for via, post in (("whip", whip_post), ("whep", whep_post)):
        app.router.add_post(f"/rooms/{{slug}}/{via}", post)
        app.router.add_route("OPTIONS", f"/rooms/{{slug}}/{via}", options)
        app.router.add_delete(f"/rooms/{{slug}}/{via}/{{session}}", _delete(via))
        app.router.add_route("OPTIONS", f"/rooms/{{slug}}/{via}/{{session}}", options)
        app.router.add_route("PATCH", f"/rooms/{{slug}}/{via}/{{session}}", _patch(via))
