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


def on_other_node(node_url: str) -> SfuError:
    """``room_on_other_node``: the room is served by the node at ``node_url`` (409 on the socket;
    WHIP/WHEP turn it into a 307 to that node)."""
    err = SfuError(409, "room_on_other_node", "this room is live on another node")
    err.extra["node_url"] = node_url
    return err
