"""Where episode files live: a small blocking interface, and the local-disk store.

The recorder's worker thread writes through ``Storage`` and the replay
routes read through it (from a thread), so an S3-compatible store can
implement the same methods (``recorder/s3.py`` does) and nothing else in the
recorder changes.  With a remote store the writer still writes to a local
``LocalStorage`` spool, and ``recorder/upload.py`` moves each closed file on.  Keys are ``/``-separated relative names built by the
recorder from validated parts (an episode's storage key and a segment name
from its own list); they are checked here again so a bad key can never
escape the root.

Every ``put`` is atomic: a reader sees the old object or the new one, never
half of one (temp file + fsync + ``os.replace`` locally; S3 PUTs already are).
"""

from __future__ import annotations

import abc
import asyncio
import os
import re
import shutil
import uuid
from pathlib import Path

# One path component: letters, digits, dot, dash, underscore; not starting with a dot.
_PART = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
TEMP_SUFFIX = ".partial"


class StorageError(Exception):
    """The store refused or failed an operation."""


class MissingObject(StorageError):
    """No object under that key."""


def check_key(key: str) -> list[str]:
    parts = key.split("/")
    if not parts or not all(_PART.match(p) for p in parts) or key.endswith(TEMP_SUFFIX):
        raise StorageError(f"invalid storage key {key!r}")
    return parts


class Storage(abc.ABC):
    """Blocking object store for episode files (call from threads, not the event loop)."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, replacing what was there."""

    @abc.abstractmethod
    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[start, start+length)`` of ``key`` (to the end when length is None)."""

    @abc.abstractmethod
    def size(self, key: str) -> int | None:
        """Size in bytes, or None when the object does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names (last key component) of the objects directly under ``prefix``."""

    @abc.abstractmethod
    def prefixes(self) -> list[str]:
        """The top-level prefixes (one per episode)."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix`` (missing is fine)."""

    @abc.abstractmethod
    def discard_partials(self, prefix: str) -> int:
        """Remove leftovers of interrupted writes under ``prefix``; returns how many."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object (missing is fine)."""

    async def aput(self, key: str, data: bytes) -> None:
        """``put`` for callers on an event loop (a remote store overrides it without a thread)."""
        await asyncio.to_thread(self.put, key, data)

    async def apresign(self, key: str, seconds: int) -> str:
        """A URL that serves ``key`` to anyone for ``seconds`` (stores that can sign override it)."""
        raise StorageError("this store cannot presign URLs")

    def check(self) -> str | None:
        """A configuration fault no retry will fix, or None (a directory is created on demand)."""
        return None

    def close(self) -> None:
        """Release connections (nothing to do for files)."""


class LocalStorage(Storage):
    """Files under a root directory (default: <data dir>/episodes)."""

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root)
        # fsync makes a closed segment survive a power cut, not just a process kill.
        self.fsync = fsync

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key))

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            raise

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        try:
            with open(self._path(key), "rb") as fh:
                if start:
                    fh.seek(start)
                return fh.read() if length is None else fh.read(length)
        except FileNotFoundError:
            raise MissingObject(f"no object {key!r}") from None

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[str]:
        try:
            return sorted(
                entry.name for entry in os.scandir(self._path(prefix))
                if entry.is_file() and not entry.name.startswith(".")
            )
        except FileNotFoundError:
            return []

    def prefixes(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.root) if e.is_dir() and _PART.match(e.name))
        except FileNotFoundError:
            return []

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def discard_partials(self, prefix: str) -> int:
        removed = 0
        try:
            entries = list(os.scandir(self._path(prefix)))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if entry.name.endswith(TEMP_SUFFIX):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed


def open_stores(config) -> tuple[Storage, LocalStorage | None]:
    """(the store episodes live in, the local spool the writer fills; None when they are one).

    ``storage.backend = local``: files under <data dir>/episodes, written in place.
    ``storage.backend = s3``: a bucket, filled from <data dir>/spool by the uploader."""
    if config["storage.backend"] == "s3":
        from odsmedia.config import ConfigError

        from .s3 import S3Storage

        if not config["storage.bucket"]:
            raise ConfigError("invalid storage.bucket='': expected a bucket name with storage.backend = s3")

        store = S3Storage(
            config["storage.bucket"], prefix=config["storage.prefix"],
            endpoint_url=config["storage.endpoint_url"], region=config["storage.region"],
        )
        return store, LocalStorage(config.data_dir / "spool")
    return LocalStorage(config.data_dir / "episodes"), None
