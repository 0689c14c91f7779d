"""Typed SFU errors: one code for the WebSocket and the HTTP endpoints."""

from __future__ import annotations

from ..errors import ApiError


class SfuError(ApiError):
    """``reason`` is the code a client branches on (``error.code`` on the socket)."""

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(status, code, message)

    @property
    def code(self) -> str:
        return self.reason
