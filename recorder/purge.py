"""Removing deleted episodes' media from the store, and retention.

However an episode row goes (the replay API, the CLI, a room deleted with
its episodes by cascade, retention), a trigger queues its storage key in
``episode_purges`` in the same transaction.  ``Purger`` empties that queue:
it deletes every object under the key and only then the queue row, so a
store that is down when the row goes is purged when it is back.  With the
local backend a node removes the files it holds; another node's files go
at that node's next start (``finalize.sweep_orphans``).

When ``recording.retention_days`` is set, each pass also deletes episodes
that ended longer ago than that, so their media follows the same path.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from . import episodes, metrics
from .storage import Storage, StorageError

log = logging.getLogger("odsmedia.recorder")


class Purger:
    def __init__(self, db: asyncpg.Pool, storage: Storage, *, interval: float = 30.0,
                 retention_days: int = 0) -> None:
        self.db = db
        self.storage = storage
        self.interval = interval
        self.retention_days = retention_days
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Run a pass now (an episode was just deleted)."""
        self._wake.set()

    async def run_once(self) -> int:
        """One pass: retention, then the queue; returns how many prefixes were purged."""
        if self.retention_days > 0:
            expired = await episodes.expire(self.db, self.retention_days)
            if expired:
                log.info("episodes past retention deleted", extra={"count": expired})
        done = 0
        for key in await episodes.purges_due(self.db):
            try:
                await asyncio.to_thread(self.storage.delete_prefix, key)
            except StorageError as exc:
                log.warning("cannot purge episode media; will retry", extra={"key": key, "error": str(exc)})
                break   # the store is down: the rest waits for the next pass
            await episodes.purged(self.db, key)
            metrics.purged.inc()
            done += 1
        return done

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.run_once()
            except (asyncpg.PostgresError, OSError):
                log.warning("episode purge pass failed; will retry")
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
