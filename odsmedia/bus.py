"""The Redis bus shared by every node: pub/sub channels plus plain keys.

One pub/sub connection per process multiplexes every channel this node
listens to.  When Redis goes away the reader reconnects with backoff,
resubscribes, and calls the ``on_reconnect`` callbacks so that consumers
(chat) can catch up from Postgres what was published while it was gone.
Every key and channel carries the configured prefix so deployments can
share one Redis.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from typing import Any, Awaitable, Callable

import orjson
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("odsmedia.bus")

Handler = Callable[[dict[str, Any]], Awaitable[None] | None]


class Bus:
    def __init__(self, url: str, prefix: str = "ods:", *, node_id: str | None = None) -> None:
        self.prefix = prefix
        # A persisted id (odsmedia.node) lets a restarted node recognise its own room claims.
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self.redis = redis.from_url(url, socket_connect_timeout=2, socket_timeout=None, health_check_interval=15)
        self._url = url
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._reconnect_callbacks: list[Callable[[], Awaitable[None]]] = []
        self._pubsub: redis.client.PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False

    def key(self, *parts: str | int) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        """Publish on a (prefixed) channel; raises if Redis is unreachable."""
        await self.redis.publish(self.key(channel), orjson.dumps(message))

    async def subscribe(self, channel: str, handler: Handler) -> Callable[[], Awaitable[None]]:
        """Call ``handler`` with every message on ``channel``; returns an unsubscribe."""
        full = self.key(channel)
        first = not self._handlers[full]
        self._handlers[full].append(handler)
        if first and self._pubsub is not None:
            try:
                await self._pubsub.subscribe(full)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                pass  # the reader resubscribes everything when it reconnects
        self._ensure_reader()

        async def unsubscribe() -> None:
            handlers = self._handlers.get(full)
            if handlers and handler in handlers:
                handlers.remove(handler)
            if handlers is not None and not handlers:
                del self._handlers[full]
                if self._pubsub is not None:
                    try:
                        await self._pubsub.unsubscribe(full)
                    except (RedisConnectionError, RedisTimeoutError, OSError):
                        pass

        return unsubscribe

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._reconnect_callbacks.append(callback)

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_loop(), name="bus-reader")
        self._wake.set()

    async def _read_loop(self) -> None:
        backoff = 0.05
        connected_before = False
        while not self._closed:
            if not self._handlers:
                self._wake.clear()
                await self._wake.wait()
                continue
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self._handlers.keys())
                self._pubsub = pubsub
                if connected_before:
                    for callback in list(self._reconnect_callbacks):
                        try:
                            await callback()
                        except Exception:
                            log.exception("bus reconnect callback failed")
                connected_before = True
                backoff = 0.05
                while not self._closed:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message["type"] != "message":
                        continue
                    channel = message["channel"].decode()
                    try:
                        payload = orjson.loads(message["data"])
                    except orjson.JSONDecodeError:
                        continue
                    for handler in list(self._handlers.get(channel, ())):
                        try:
                            result = handler(payload)
                            if result is not None:
                                await result
                        except Exception:
                            log.exception("bus handler failed", extra={"channel": channel})
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError):
                self._pubsub = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                self._pubsub = None
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        await self.redis.aclose()
