"""Wires analytics: the audience recorder (this node's sink), its sampling and
retention loop, the replay beacon, session reports and the operator page.

GET  /episodes/{id}/report          the session report (the room's host, or an operator)
GET  /episodes/{id}/report.csv      ?table=top_questions|highlights|per_minute|replay_retention
GET  /operator                      the operator page
GET  /operator.csv                  ?table=live_rooms|sessions|days
POST /api/analytics/replay          the replay page's beacon (replay.py)
and the policy's pages (policy.py): /privacy, the change notice, security.txt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web

from ..errors import STORAGE_ERRORS, ApiError, path_id
from ..gate import Entry
from ..keys import CONFIG, DB, GATE
from . import operators, pages, policy, replay, reports, store
from .events import AUDIENCE_RECORDER, AudienceRecorder
from .sink import AUDIENCE

log = logging.getLogger("odsmedia.analytics")


def _live_rooms(app: web.Application):
    from ..rooms.sfu import SFU

    def rooms() -> list[int]:
        sfu = app.get(SFU)
        if sfu is None:
            return []
        return [room.record.id for room in list(sfu.rooms.values()) if room.publications]
    return rooms


async def run(recorder: AudienceRecorder, db: asyncpg.Pool, *, interval: float, sweep_interval: float,
              aggregate_days: int) -> None:
    loop = asyncio.get_running_loop()
    next_sweep = loop.time()
    while True:
        await asyncio.sleep(interval - (recorder.clock() % interval))
        try:
            await recorder.tick(interval)
        except STORAGE_ERRORS:
            log.warning("audience counts not written; kept for the next round")
        if loop.time() >= next_sweep:
            next_sweep = loop.time() + sweep_interval
            try:
                await store.sweep(db, aggregate_days=aggregate_days)
            except STORAGE_ERRORS:
                log.warning("analytics retention sweep failed; will retry")


# --- pages ------------------------------------------------------------------------------------

def _csv(table: reports.Table) -> web.Response:
    return web.Response(text=table.csv(), content_type="text/csv", charset="utf-8", headers={
        "Content-Disposition": f'attachment; filename="{table.name}.csv"', "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff"})


def _pick(tables: list[reports.Table], request: web.Request) -> reports.Table:
    wanted = request.query.get("table", "")
    for t in tables:
        if t.name == wanted:
            return t
    raise ApiError(400, "unknown_table", "table must be one of: " + ", ".join(t.name for t in tables))


def html_refusals(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """A page answers a refusal with a readable page, not the API's JSON."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return pages.html_response(pages.refusal_page(exc.status, exc.message), exc.status)
    return wrapped


async def _report(request: web.Request) -> reports.SessionReport:
    db = request.app[DB]
    ep = await reports.episode(db, path_id(request, "episode_id", "episode_not_found", "no such episode"))
    if ep is None:
        raise ApiError(404, "episode_not_found", "no such episode")
    gate = request.app[GATE]
    identity = await gate.identify(request)
    if identity.token is None and identity.account_id is None:
        raise ApiError(401, "not_signed_in", "sign in as the room's host to read its session reports")
    if identity.token is not None or not await operators.is_operator(db, identity.account_id):
        admission = await gate.admit(request, ep.room_slug, Entry.REPLAY)
        if admission.role != "host":
            raise ApiError(403, "not_the_host", "session reports are for the room's host")
    return await reports.session_report(db, ep)


async def report_page(request: web.Request) -> web.Response:
    return pages.html_response(pages.report_page(await _report(request)))


async def report_csv(request: web.Request) -> web.Response:
    return _csv(_pick((await _report(request)).tables(), request))


async def _overview(request: web.Request) -> reports.Overview:
    return await reports.overview(request.app[DB], sample_interval=request.app[CONFIG]["analytics.sample_interval"])


async def operator_page(request: web.Request) -> web.Response:
    identity = await operators.require_operator(request)
    email = await request.app[DB].fetchval("SELECT email FROM accounts WHERE id = $1", identity.account_id)
    return pages.html_response(pages.operator_page(await _overview(request), operator_email=email or ""))


async def operator_csv(request: web.Request) -> web.Response:
    await operators.require_operator(request)
    return _csv(_pick((await _overview(request)).tables(), request))


def setup(app: web.Application) -> None:
    config = app[CONFIG]
    if config["analytics.enabled"]:
        async def lifecycle(app: web.Application) -> AsyncIterator[None]:
            from recorder.recorder import local_node_id

            recorder = AudienceRecorder(app[DB], node=local_node_id(config.data_dir),
                                        trusted_proxies=config["http.trusted_proxies"],
                                        live_rooms=_live_rooms(app))
            app[AUDIENCE] = recorder
            app[AUDIENCE_RECORDER] = recorder
            app[replay.BEACON_GUARD] = replay.BeaconGuard()
            task = asyncio.create_task(run(recorder, app[DB], interval=config["analytics.sample_interval"],
                                           sweep_interval=config["privacy.sweep_interval"],
                                           aggregate_days=config["analytics.aggregate_days"]),
                                       name="analytics")
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                await recorder.close()
            except STORAGE_ERRORS:
                log.warning("last audience counts not written at shutdown")

        app.cleanup_ctx.append(lifecycle)
    # Registered either way, so the replay page's beacon never meets a 404.
    app.router.add_post("/api/analytics/replay", replay.beacon)
    app.router.add_get("/episodes/{episode_id:[0-9]+}/report", html_refusals(report_page))
    app.router.add_get("/episodes/{episode_id:[0-9]+}/report.csv", report_csv)
    app.router.add_get("/operator", html_refusals(operator_page))
    app.router.add_get("/operator.csv", operator_csv)
    policy.setup_routes(app)

    async def mailings(app: web.Application) -> AsyncIterator[None]:
        from ..mail import make_mailer

        mailer = make_mailer(config)
        task = asyncio.create_task(policy.run_mailings(app[DB], mailer, public_url=config.public_url),
                                   name="policy-mailings")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await mailer.close()

    app.cleanup_ctx.append(mailings)
