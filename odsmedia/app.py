"""The aiohttp application factory: services, middleware, health, features.

``make_app(config)`` wires one process: an asyncpg pool, the Redis bus,
the entry gate, and every feature's routes.  Features expose
``setup(app)`` and keep their own object under a typed key of their own; their
start/stop work goes into ``app.cleanup_ctx`` so shutdown runs in reverse
order of start-up (peers close before the bus and the pool).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import secrets
import time
import uuid
from typing import AsyncIterator

from aiohttp import web

from . import metrics, node
from .abuse import ABUSE, NetworkCaps
from .auth.tokens import GateTokens
from .bus import Bus
from .config import Config
from .errors import OUTAGE_ERRORS, ApiError, json_response, unavailable
from .gate import Gate
from .keys import BUS, CONFIG, DB, GATE
from .logs import request_id
from .reauth import REAUTH, Reauthorizer
from .storage import connect

log = logging.getLogger("odsmedia.app")

# Feature modules, each with setup(app). Order matters only for cleanup:
# later entries stop first.
FEATURE_MODULES = (
    "odsmedia.auth.routes",
    "odsmedia.billing.routes",
    "odsmedia.rooms.routes",
    "recorder.routes",
    "odsmedia.chat.routes",
    "signaling.routes",
    "odsmedia.privacy.routes",
    "odsmedia.analytics.routes",
    "web.routes",
)


def wants_page(request: web.Request) -> bool:
    """A browser navigating to a page URL (not an API call, asset or socket)."""
    return (request.method == "GET" and "text/html" in request.headers.get("Accept", "")
            and not request.path.startswith(("/api/", "/static/")) and request.headers.get("Upgrade", "") == "")


def error_page(status: int, reason: str) -> web.Response:
    from web.pages import error_page as render

    return render(status, reason)


@web.middleware
async def observe(request: web.Request, handler):
    rid = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex[:16]
    token = request_id.set(rid)
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    status = 500
    try:
        try:
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPException as exc:
            if exc.status >= 400 and exc.content_type != "application/json" and wants_page(request):
                # A person typed or followed a link: a page, not JSON (APIs keep JSON).
                response = error_page(exc.status, exc.reason)
            elif exc.status >= 400 and exc.content_type != "application/json":
                reason = exc.reason.lower().replace(" ", "_")
                response = json_response({"error": reason, "message": exc.reason}, status=exc.status,
                                         headers={k: v for k, v in exc.headers.items()
                                                  if k.lower() in ("allow", "location")})
            else:
                raise
        status = response.status
        if not response.prepared:
            response.headers["X-Request-Id"] = rid
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499
        raise
    except OUTAGE_ERRORS as exc:
        # PostgreSQL or Redis is away: say so (503, Retry-After), no traceback per request.
        log.warning("request failed: service unavailable (%s)", type(exc).__name__, extra={"path": request.path})
        response = unavailable().response()
        response.headers["X-Request-Id"] = rid
        status = 503
        return response
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return json_response({"error": "internal", "message": "internal server error", "request_id": rid},
                             status=500)
    finally:
        metrics.http_requests.labels(request.method, route, str(status)).inc()
        metrics.http_latency.labels(route).observe(time.perf_counter() - started)
        request_id.reset(token)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}

    async def check_db() -> None:
        try:
            await asyncio.wait_for(request.app[DB].fetchval("SELECT 1"), 2)
            checks["postgres"] = "ok"
        except Exception as exc:
            checks["postgres"] = f"down: {type(exc).__name__}"

    async def check_redis() -> None:
        try:
            await asyncio.wait_for(request.app[BUS].ping(), 2)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"down: {type(exc).__name__}"

    await asyncio.gather(check_db(), check_redis())
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        return json_response({"status": "unavailable", "down": down, "checks": checks}, status=503)
    return json_response({"status": "ready", "checks": checks})


async def metrics_handler(request: web.Request) -> web.Response:
    body, content_type = metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def make_app(config: Config, *, features: tuple[str, ...] = FEATURE_MODULES) -> web.Application:
    if not config["database.url"] or not config["redis.url"]:
        raise ValueError("make_app needs database.url and redis.url (dev resolves embedded ones first)")
    app = web.Application(middlewares=[observe], client_max_size=1024 * 1024)
    app[CONFIG] = config
    app[ABUSE] = NetworkCaps(config, config["secret.key"] or secrets.token_urlsafe(32))

    async def services(app: web.Application) -> AsyncIterator[None]:
        app[DB] = await connect(config["database.url"], max_size=config["database.pool_size"])
        app[BUS] = Bus(config["redis.url"], config["redis.prefix"], node_id=node.identity(config.data_dir, node.worker_index))
        # Bearer tokens are the token table's, not the cookie feature's: WHIP, operator
        # tokens and tokens in join messages work in every feature selection.
        app[GATE] = Gate(app[DB], tokens=GateTokens(app[DB]))
        app[REAUTH] = Reauthorizer(app[DB], config["auth.reauth_interval"])
        app[REAUTH].start()
        yield
        await app[REAUTH].stop()
        await app[BUS].close()
        await app[DB].close()

    app.cleanup_ctx.append(services)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    for name in features:
        importlib.import_module(name).setup(app)
    return app
