"""Helpers shared by the chat tests (no tests here): a chat socket client that
awaits events by predicate with a deadline, and two-node setups."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable

import aiohttp
import orjson

Event = dict[str, Any]
_refs = itertools.count(1)


class ChatSocket:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[Event] = []
        self.welcome: Event | None = None
        self.closed_code: int | None = None
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, session: aiohttp.ClientSession, url: str, *, token: str | None = None,
                   after: int | None = None, name: str | None = None, header_token: str | None = None,
                   expect_welcome: bool = True) -> "ChatSocket":
        headers = {"Authorization": f"Bearer {header_token}"} if header_token else {}
        ws = await session.ws_connect(url, headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        join: Event = {"type": "join"}
        if token:
            join["token"] = token
        if after is not None:
            join["after"] = after
        if name:
            join["name"] = name
        await ws.send_str(orjson.dumps(join).decode())
        sock = cls(ws)
        if expect_welcome:
            sock.welcome = await sock.wait(lambda e: e["type"] in ("welcome", "error"))
            assert sock.welcome["type"] == "welcome", sock.welcome
        return sock

    async def _read(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.events.append(orjson.loads(msg.data))
                self._changed.set()
            elif msg.type == aiohttp.WSMsgType.CLOSE:
                # The code the server's close frame carries; ws.close_code becomes 1006 when the
                # client's close reply meets a connection the server already closed.
                self.closed_code = msg.data
                break
            elif msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                self.closed_code = self.ws.close_code
                break
        self._changed.set()

    async def wait(self, predicate: Callable[[Event], bool], timeout: float = 5.0) -> Event:
        """The first event (seen so far or arriving) matching ``predicate``."""
        deadline = asyncio.get_running_loop().time() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            if self.closed_code is not None:
                raise AssertionError(f"socket closed ({self.closed_code}) waiting; events: {self.events[-5:]}")
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no matching event within {timeout}s; last events: {self.events[-5:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_closed(self, timeout: float = 5.0) -> int:
        await asyncio.wait_for(self._reader, timeout)
        return self.closed_code or 0

    async def request(self, message: Event, timeout: float = 5.0) -> Event:
        """Send with a fresh ref; the ack or error for it."""
        ref = f"r{next(_refs)}"
        await self.ws.send_str(orjson.dumps({**message, "ref": ref}).decode())
        return await self.wait(lambda e: e.get("ref") == ref and e["type"] in ("ack", "error"), timeout)

    async def post(self, text: str, kind: str = "message") -> Event:
        return await self.request({"type": "post", "kind": kind, "text": text})

    def items(self) -> dict[int, Event]:
        """The client's view: welcome items and live changes applied in order."""
        view: dict[int, Event] = {}
        if self.welcome:
            for item in self.welcome["items"]:
                view[item["id"]] = item
        for event in self.events:
            if event["type"] == "item":
                view[event["item"]["id"]] = event["item"]
            elif event["type"] == "deleted":
                for i in event["ids"]:
                    view.pop(i, None)
        return view

    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events if "seq" in e and e["type"] in ("item", "deleted")]

    def last_seq(self) -> int:
        seqs = self.seqs()
        return max(seqs) if seqs else (self.welcome or {}).get("cursor", 0)

    async def close(self) -> None:
        await self.ws.close()
        try:
            await asyncio.wait_for(self._reader, 5)
        except (asyncio.TimeoutError, Exception):
            self._reader.cancel()


async def make_account(db, email: str, name: str = "") -> int:
    return await db.fetchval("INSERT INTO accounts (email, display_name) VALUES ($1, $2) RETURNING id",
                             email.lower(), name)
