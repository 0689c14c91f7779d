"""One error shape for every HTTP endpoint.

Handlers raise ``ApiError(status, reason, message)``; the middleware in
``app`` turns it into ``{"error": reason, "message": ...}`` with that status.
``reason`` is a stable machine-readable code clients branch on; ``message``
is for people.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


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


def path_id(request: web.Request, name: str, reason: str, message: str) -> int:
    """A positive bigint id from the URL path, or a 404 with ``reason`` (never a 500)."""
    raw = request.match_info[name]
    if not raw.isdigit() or len(raw) > 18 or int(raw) == 0:
        raise ApiError(404, reason, message)
    return int(raw)
