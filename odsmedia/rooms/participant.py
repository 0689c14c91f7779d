"""Participant: one connected identity in a room, with its transports.

A participant comes from a signaling socket, a WHIP session or a WHEP
session.  Events for it go through ``notify``, which never blocks the
caller: messages queue (bounded) for the socket writer, and a client too
slow to read them is disconnected instead of growing memory.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    from .transport import Transport

OUTBOX_LIMIT = 512

Writer = Callable[[dict[str, Any]], Awaitable[None]]


class Participant:
    def __init__(self, subject: str, name: str | None, role: str, *, via: str = "ws",
                 close_socket: Callable[[int], None] | None = None,
                 on_leave: Callable[[], None] | None = None) -> None:
        self.id = "PA" + secrets.token_hex(5)
        self.subject = subject
        # Without a name of its own a participant is called by its role and a bit of its id.
        self.name = name if name is not None else f"{role.capitalize()} {self.id[-4:]}"
        self.role = role
        self.via = via                      # "ws" | "whip" | "whep"
        self.transports: dict[str, "Transport"] = {}
        self.left = False
        self._outbox: deque[dict[str, Any]] = deque()
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        # Closes the signaling socket with a WebSocket close code (None: no socket, WHIP/WHEP).
        self.close_socket = close_socket
        # Called once when the participant leaves its room (releases per-network leases).
        self.on_leave: list[Callable[[], None]] = [on_leave] if on_leave is not None else []

    # --- events -----------------------------------------------------------------------------

    def attach(self, write: Writer) -> None:
        """Start delivering queued events through ``write`` (a socket send)."""
        self._wake = asyncio.Event()
        self._writer = asyncio.ensure_future(self._drain(write))

    def notify(self, message: dict[str, Any]) -> None:
        if self._wake is None or self.left:
            return
        if len(self._outbox) >= OUTBOX_LIMIT:
            self._outbox.clear()
            if self.close_socket is not None:
                self.close_socket(4008)   # too slow to read its events: drop it, never buffer without bound
            return
        self._outbox.append(message)
        self._wake.set()

    async def _drain(self, write: Writer) -> None:
        assert self._wake is not None
        try:
            while True:
                while self._outbox:
                    await write(self._outbox.popleft())
                if self.left:
                    return
                self._wake.clear()
                await self._wake.wait()
        except (ConnectionError, RuntimeError):
            return  # the socket went away; the reader side cleans up

    def stop(self) -> None:
        """No more events; the writer finishes what is queued and exits."""
        self.left = True
        if self._wake is not None:
            self._wake.set()

    async def flush_and_stop(self, timeout: float = 1.0) -> None:
        """Deliver what is queued (e.g. a ``kicked`` event), then stop the writer."""
        self.left = True
        if self._wake is not None:
            self._wake.set()
        if self._writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), timeout)
            except (asyncio.TimeoutError, Exception):
                self._writer.cancel()
            self._writer = None

    # --- views ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        # The subject ties this participant to its chat identity: moderators act
        # on a person (chat sanctions, media mute/kick) by subject.
        return {"id": self.id, "name": self.name, "role": self.role, "via": self.via, "subject": self.subject}
