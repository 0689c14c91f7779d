"""The interface other features call to report audience events.

Features never import the analytics machinery: they ask ``audience(app)``
for the sink and make one call where something happened.  Without the
analytics feature installed (or for an opted-out person) the calls do
nothing.  Every call is synchronous and only touches memory; the
analytics feature aggregates and writes in the background.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web


def opted_out(headers) -> bool:
    """Do Not Track or Global Privacy Control: this request counts in no analytics at all
    (the one rule, for the audience counts and the request-log aggregates alike)."""
    return headers.get("DNT", "").strip() == "1" or headers.get("Sec-GPC", "").strip() == "1"


class LiveView(Protocol):
    """One viewer watching a room live: ``start()`` once they are in (a join refused after
    the view was made counts nothing), ``end()`` when they leave (idempotent)."""

    def start(self) -> None: ...

    def end(self) -> None: ...


class AudienceSink(Protocol):
    def live_view(self, request: web.Request, room_id: int, subject: str, role: str,
                  via: str) -> LiveView | None:
        """Someone is joining live (``via``: ``webrtc`` or ``hls``); None when not counted (hosts, opt-outs)."""

    def hls_poll(self, request: web.Request, room_id: int, episode_id: int, subject: str) -> None:
        """A player polled the live LL-HLS playlist of ``episode_id``: it is watching live
        over HLS (a heartbeat, like the replay page's beacon for a live episode)."""

    def chat_item(self, request: web.Request, room_id: int, kind: str) -> None:
        """A message, question or highlight was accepted."""

    def question_answered(self, request: web.Request, room_id: int) -> None: ...

    def search(self, request: web.Request, room_id: int) -> None:
        """A search of the room's chat ran (counted; the query is not kept)."""


class _NullSink:
    def live_view(self, request, room_id, subject, role, via):
        return None

    def hls_poll(self, request, room_id, episode_id, subject):
        pass

    def chat_item(self, request, room_id, kind):
        pass

    def question_answered(self, request, room_id):
        pass

    def search(self, request, room_id):
        pass


NULL_SINK: AudienceSink = _NullSink()
AUDIENCE: web.AppKey[AudienceSink] = web.AppKey("audience")


def audience(app: web.Application) -> AudienceSink:
    return app.get(AUDIENCE, NULL_SINK)
