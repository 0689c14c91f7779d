"""One error shape for every HTTP endpoint.

Handlers raise ``ApiError(status, reason, message)``; the middleware in
``app`` turns it into ``{"error": reason, "message": ...}`` with that status.
``reason`` is a stable machine-readable code clients branch on; ``message``
is for people.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from redis import exceptions as redis_errors


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str = "", **extra: Any) -> None:
        super().__init__(message or reason)
        self.status = status
        self.reason = reason
        self.message = message or reason.replace("_", " ")
        self.extra = extra
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": self.reason, "message": self.message, **self.extra}

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.body()),
            content_type="application/json",
            headers=self.headers,
        )


# -- outages: PostgreSQL or Redis unreachable -----------------------------------------

# What a request meets when PostgreSQL or Redis is away: refused or reset connections
# (OSError), timeouts, a server shutting down (class 57), a connection lost mid-query.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.ConnectionDoesNotExistError,
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
)
# What a background loop (a sweep, a flush) survives and retries: an outage, a database
# error, or a connection closed under it mid-operation (asyncpg's InterfaceError).
STORAGE_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, asyncpg.InterfaceError) + OUTAGE_ERRORS

# Seconds a client is told to wait before retrying during an outage.
OUTAGE_RETRY_AFTER = 5
# WebSocket close code for an outage (RFC 6455 "internal error": try again later).
CLOSE_UNAVAILABLE = 1011


def unavailable(message: str = "a service this needs is unavailable; try again shortly") -> ApiError:
    err = ApiError(503, "unavailable", message, retry_after=OUTAGE_RETRY_AFTER)
    err.headers["Retry-After"] = str(OUTAGE_RETRY_AFTER)
    return err


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        content_type="application/json",
        headers=headers,
    )


async def read_json(request: web.Request, *, limit: int = 64 * 1024) -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413 with a reason."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", f"request body over {limit} bytes")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, "body_too_large", f"request body over {limit} bytes")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    return data


# -- validation shared by every route: ids, integers, text -------------------------------

# Ids are Postgres bigints; counts and cursors never need more either.
INT64_MAX = 2**63 - 1
# ASCII digits only: str.isdigit() and int() also accept Arabic-Indic, superscript and
# other digits ("\u0661" is 1), and int() refuses strings past 4300 digits with an error.
_DIGITS = re.compile(r"[0-9]{1,19}", re.ASCII)


def ascii_int(raw: Any, *, low: int = 0, high: int = INT64_MAX) -> int | None:
    """``raw`` (text) as an integer when it is 1-19 ASCII digits within [low, high], else None."""
    if not isinstance(raw, str) or not _DIGITS.fullmatch(raw):
        return None
    value = int(raw)
    return value if low <= value <= high else None


def json_int(raw: Any, *, low: int = 0, high: int = INT64_MAX) -> int | None:
    """A JSON number that is an integer within [low, high] (never a bool), else None."""
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        return None
    return raw


def path_id(request: web.Request, name: str, reason: str, message: str) -> int:
    """A positive bigint id from the URL path, or a 404 with ``reason`` (never a 500)."""
    value = ascii_int(request.match_info[name], low=1)
    if value is None:
        raise ApiError(404, reason, message)
    return value


def query_int(request: web.Request, name: str, default: int, *, low: int = 0, high: int = INT64_MAX) -> int:
    """An integer query parameter, or a 400 ``invalid_<name>``."""
    raw = request.query.get(name)
    if raw is None:
        return default
    value = ascii_int(raw, low=low, high=high)
    if value is None:
        raise ApiError(400, f"invalid_{name}", f"{name} must be an integer from {low} to {high}")
    return value


def has_unstorable(text: str) -> bool:
    """NUL (Postgres text cannot hold it) or a lone surrogate (not encodable as UTF-8)."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def header_text(request: web.Request, name: str) -> str:
    """A header's value, or "" when it is not clean UTF-8 (aiohttp keeps undecodable bytes as
    surrogate escapes, which fail later wherever the value is encoded again)."""
    value = request.headers.get(name, "")
    return "" if has_unstorable(value) else value
