"""Moving closed episode files from the node's spool to the shared store.

With a remote store (``storage.backend = s3``) the HLS writer thread still
writes every file to a local spool (``<data dir>/spool``), atomically, as
before; the recording's task then calls ``Uploader.upload`` for each closed
init section and segment, in order, before its row is added and it is
listed.  A failed upload is retried with exponential backoff (jittered,
capped), so a bucket that refuses writes for a while only delays listing:
the writer keeps writing to the spool meanwhile, and nothing is lost.  The
spool copy is deleted once the row listing it exists; whatever a crash
leaves in the spool is uploaded by the next start's recovery.

Nothing here runs on the live path: reading the spool file is a thread hop,
and the PUT runs on the store's own loop (``S3Storage.aput``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from . import metrics
from .storage import Storage, StorageError

log = logging.getLogger("odsmedia.recorder")

FIRST_DELAY = 0.2


class UploadFailed(StorageError):
    """Gave up before the store took the file (only with a deadline: start-up recovery, the CLI)."""


class Uploader:
    def __init__(self, spool: Storage, store: Storage, *, max_delay: float = 5.0) -> None:
        self.spool = spool
        self.store = store
        self.max_delay = max(FIRST_DELAY, max_delay)

    async def upload(self, key: str, *, give_up_after: float | None = None) -> int:
        """Copy ``key`` from the spool to the store; returns its size.

        Retries until the store takes it, or for at most ``give_up_after``
        seconds (then ``UploadFailed``).  PUT replaces, so uploading a key
        twice (a crash between upload and row) is harmless."""
        data = await asyncio.to_thread(self.spool.read, key)
        started = time.monotonic()
        delay = FIRST_DELAY
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.store.aput(key, data)
                metrics.uploads.inc()
                metrics.upload_bytes.inc(len(data))
                if attempt > 1:
                    log.info("upload succeeded after retries", extra={"key": key, "attempts": attempt})
                return len(data)
            except StorageError as exc:
                metrics.upload_failures.inc()
                waited = time.monotonic() - started
                if give_up_after is not None and waited + delay > give_up_after:
                    raise UploadFailed(f"gave up uploading {key!r} after {attempt} attempts: {exc}") from exc
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("upload failed; retrying", extra={"key": key, "attempt": attempt, "error": str(exc)})
            # Full jitter keeps many recordings from retrying in step after an outage.
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(self.max_delay, delay * 2)
