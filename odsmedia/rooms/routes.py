"""Rooms HTTP API and the SFU's place in the application.

``setup`` creates the node's ``Sfu`` at ``app[SFU]`` right away
(other features' setup may add observers), hands it the bus once services
are up, and closes every peer connection and socket on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from aiohttp import web

from recorder import episodes

from .. import metrics, node
from ..errors import json_response
from ..gate import Entry
from ..keys import BUS, CONFIG, DB, GATE
from ..media import ice, udpmux
from ..media.ice import browser_ice_servers
from . import directory
from .placement import Placement
from .placement_policy import Limits
from .relay import RelayHub
from .sfu import SFU, Sfu


async def room_info(request: web.Request) -> web.Response:
    """Public room facts a page needs before joining: title, access, liveness, ICE servers."""
    record = await directory.require(request.app[DB], request.match_info["slug"])
    room = request.app[SFU].get(record.slug)
    publications = list(room.publications.values()) if room else []
    return json_response({
        **record.public(),
        "live": bool(publications),
        "publications": len(publications),
        "ice_servers": browser_ice_servers(request.app[CONFIG]),
    }, headers={"Cache-Control": "no-store"})


async def room_list(request: web.Request) -> web.Response:
    """The home page's directory: public rooms, live first; and the signed-in account's own rooms."""
    db, sfu = request.app[DB], request.app[SFU]
    identity = await request.app[GATE].identify(request)
    recording = await episodes.live_room_ids(db)

    def entries(records: list[directory.RoomRecord]) -> list[dict]:
        # Live: publishing on this node, or a session being recorded on any node.
        out = [{**r.public(), "live": r.id in recording or bool((room := sfu.get(r.slug)) and room.publications)}
               for r in records]
        return sorted(out, key=lambda e: not e["live"])

    public = entries(await directory.listing(db))
    mine = []
    if identity.account_id is not None and identity.token is None:
        mine = entries(await directory.listing(db, owner_id=identity.account_id))
    return json_response({"rooms": public, "mine": mine}, headers={"Cache-Control": "no-store"})


async def participants(request: web.Request) -> web.Response:
    """Who is in the room now (needs the same admission as joining)."""
    await request.app[GATE].admit(request, request.match_info["slug"], Entry.JOIN)
    room = request.app[SFU].get(request.match_info["slug"])
    snapshot = room.snapshot() if room else {"participants": [], "publications": []}
    return json_response(snapshot, headers={"Cache-Control": "no-store"})


def setup(app: web.Application) -> None:
    sfu = Sfu(app[CONFIG])
    metrics.watch(sfu)
    app[SFU] = sfu

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        sfu.bus = app[BUS]
        config = app[CONFIG]
        limits = Limits(relay_threshold=config["rooms.relay_threshold"],
                        relay_cpu_percent=config["rooms.relay_cpu_percent"],
                        full_cpu_percent=config["rooms.full_cpu_percent"])
        sfu.placement = Placement(app[BUS], config["http.node_url"] or config.public_url, limits=limits,
                                  worker=node.worker_index)
        sfu.placement.load = sfu.load
        sfu.relays = RelayHub(sfu, app[BUS])
        await sfu.relays.start()
        refresher = asyncio.create_task(sfu.placement.run(), name="room-placement")
        # The ICE policy is process-wide: the application that starts sets it.
        ice.configure(sfu.config["ice.addresses"], sfu.config["ice.allowed_networks"])
        ice.set_consent_timeout(max(3.0, sfu.config["ice.consent_timeout"]))
        muxes = None
        if sfu.config["media.udp_port"]:
            # One UDP port per node: every server peer connection on it (media.udpmux).
            muxes = await udpmux.UdpMuxSet.open(ice.host_addresses(), sfu.config["media.udp_port"])
        udpmux.install(muxes)
        try:
            yield
        finally:
            await sfu.close()
            await sfu.relays.close()
            if muxes is not None:
                muxes.close()
                if udpmux.active() is muxes:
                    udpmux.install(None)
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        with contextlib.suppress(Exception):
            await sfu.placement.unregister()     # a clean stop: no redirect names this node any more

    async def on_shutdown(app: web.Application) -> None:
        # Before cleanup: peers and sockets close while the bus and pool still exist.
        await sfu.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/api/rooms", room_list)
    app.router.add_get("/api/rooms/{slug}", room_info)
    app.router.add_get("/api/rooms/{slug}/participants", participants)
