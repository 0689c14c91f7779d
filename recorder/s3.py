"""Episode media in an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, GCS interop).

``S3Storage`` implements the blocking ``Storage`` interface the recorder's
threads and the replay routes already use, plus awaitable ``aput`` and
``apresign`` for callers on an event loop.  All S3 traffic runs on one
private event loop in a daemon thread with one aiobotocore client (one
connection pool per process): the server's loop never signs, hashes or
waits on a request, and a blocking caller only waits on a future.

Credentials come from botocore's standard chain (environment, shared
config and credentials files, container and instance roles); nothing of
them is in ODS settings.  Every PUT carries Content-MD5, so the store
rejects a body damaged on the way instead of keeping it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from concurrent.futures import Future
from typing import Any, Awaitable, Coroutine

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .storage import MissingObject, Storage, StorageError, check_key

_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING


class S3Storage(Storage):
    """Objects ``<prefix><key>`` in ``bucket``; keys are checked like the local store's."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str = "",
        region: str = "",
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        if not bucket:
            raise ValueError("storage.bucket is required with storage.backend = s3")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self._client_args: dict[str, Any] = {
            "endpoint_url": endpoint_url or None,
            "region_name": region or None,
            "config": AioConfig(
                # SigV4 everywhere, presigned URLs too (SigV2 is gone from most regions and R2).
                signature_version="s3v4",
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                # The uploader retries with its own backoff; reads get botocore's few quick retries.
                retries={"max_attempts": 2, "mode": "standard"},
                # Path-style addressing: MinIO and most S3-compatible endpoints want it.
                s3={"addressing_style": "path"} if endpoint_url else None,
                # Content-MD5 is sent explicitly; no second (CRC) checksum per request.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        }
        self._loop = asyncio.new_event_loop()
        self._client: Any = None
        self._client_cm: Any = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="s3-storage", daemon=True)
        self._thread.start()

    # --- plumbing: every S3 call runs on the storage loop ------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _wait(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if threading.current_thread() is self._thread:
            raise RuntimeError("S3Storage blocking call on its own loop")
        return self._submit(coro).result()

    def _await(self, coro: Coroutine[Any, Any, Any]) -> Awaitable[Any]:
        return asyncio.wrap_future(self._submit(coro))

    async def _s3(self) -> Any:
        if self._client is None:
            self._client_cm = get_session().create_client("s3", **self._client_args)
            self._client = await self._client_cm.__aenter__()
        return self._client

    def _key(self, key: str) -> str:
        check_key(key)
        return self.prefix + key

    def close(self) -> None:
        async def shutdown() -> None:
            if self._client_cm is not None:
                await self._client_cm.__aexit__(None, None, None)
                self._client = self._client_cm = None

        if self._loop.is_running():
            try:
                self._wait(shutdown())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(5)

    # --- the Storage interface -----------------------------------------------------------------

    async def _put(self, key: str, data: bytes) -> None:
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        try:
            s3 = await self._s3()
            await s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentMD5=md5,
                                ContentType=_content_type(key))
        except (ClientError, BotoCoreError, OSError, asyncio.TimeoutError) as exc:
            raise StorageError(f"cannot store {key!r}: {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        self._wait(self._put(key, data))

    async def aput(self, key: str, data: bytes) -> None:
        await self._await(self._put(key, data))

    async def _read(self, key: str, start: int, length: int | None) -> bytes:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if start or length is not None:
            args["Range"] = f"bytes={start}-" + ("" if length is None else str(start + length - 1))
        try:
            s3 = await self._s3()
            response = await s3.get_object(**args)
            async with response["Body"] as body:
                return await body.read()
        except ClientError as exc:
            if _missing(exc):
                raise MissingObject(f"no object {key!r}") from None
            raise StorageError(f"cannot read {key!r}: {exc}") from exc
        except (BotoCoreError, OSError, asyncio.TimeoutError) as exc:
            raise StorageError(f"cannot read {key!r}: {exc}") from exc

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        if length == 0:
            return b""
        return self._wait(self._read(key, start, length))

    async def _size(self, key: str) -> int | None:
        try:
            s3 = await self._s3()
            head = await s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise StorageError(f"cannot stat {key!r}: {exc}") from exc
        except (BotoCoreError, OSError, asyncio.TimeoutError) as exc:
            raise StorageError(f"cannot stat {key!r}: {exc}") from exc
        return int(head["ContentLength"])

    def size(self, key: str) -> int | None:
        return self._wait(self._size(key))

    async def _listing(self, prefix: str, delimiter: bool) -> tuple[list[str], list[str]]:
        """(object keys, common prefixes) under ``self.prefix + prefix``."""
        keys: list[str] = []
        common: list[str] = []
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if delimiter:
            args["Delimiter"] = "/"
        try:
            s3 = await self._s3()
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(**args):
                keys += [item["Key"] for item in page.get("Contents", ())]
                common += [item["Prefix"] for item in page.get("CommonPrefixes", ())]
        except (ClientError, BotoCoreError, OSError, asyncio.TimeoutError) as exc:
            raise StorageError(f"cannot list {prefix!r}: {exc}") from exc
        return keys, common

    def list(self, prefix: str) -> list[str]:
        check_key(prefix)
        keys, _ = self._wait(self._listing(prefix + "/", True))
        return sorted(k.rsplit("/", 1)[-1] for k in keys)

    def prefixes(self) -> list[str]:
        _, common = self._wait(self._listing("", True))
        return sorted(p[len(self.prefix):].rstrip("/") for p in common)

    def keys(self) -> list[str]:
        """Every object key under the store's prefix (relative), for audits and tests."""
        keys, _ = self._wait(self._listing("", False))
        return sorted(k[len(self.prefix):] for k in keys)

    async def _delete_prefix(self, prefix: str) -> None:
        keys, _ = await self._listing(prefix + "/", False)
        try:
            s3 = await self._s3()
            for i in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[i:i + 1000]]
                result = await s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                if result.get("Errors"):
                    raise StorageError(f"cannot delete under {prefix!r}: {result['Errors'][:3]}")
        except (ClientError, BotoCoreError, OSError, asyncio.TimeoutError) as exc:
            raise StorageError(f"cannot delete under {prefix!r}: {exc}") from exc

    def delete_prefix(self, prefix: str) -> None:
        check_key(prefix)
        self._wait(self._delete_prefix(prefix))

    async def _delete(self, key: str) -> None:
        try:
            s3 = await self._s3()
            await s3.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError, OSError, asyncio.TimeoutError) as exc:
            raise StorageError(f"cannot delete {key!r}: {exc}") from exc

    def delete(self, key: str) -> None:
        self._wait(self._delete(key))

    def discard_partials(self, prefix: str) -> int:
        return 0   # a PUT is atomic: a bucket never holds half an object

    async def _check(self) -> str | None:
        try:
            s3 = await self._s3()
            await s3.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "403", "AccessDenied", "InvalidAccessKeyId",
                        "SignatureDoesNotMatch"):
                return f"bucket {self.bucket!r}: {code}"
        except NoCredentialsError:
            return "no AWS credentials found (environment, shared config files, or an instance role)"
        except (BotoCoreError, OSError, asyncio.TimeoutError):
            pass   # unreachable now: uploads retry, the spool holds the segments meanwhile
        return None

    def check(self) -> str | None:
        """A configuration fault that no retry will fix (missing bucket, refused or missing
        credentials), or None (reachable, or only unreachable for now)."""
        return self._wait(self._check())

    # --- replay --------------------------------------------------------------------------------

    async def _presign(self, key: str, seconds: int) -> str:
        try:
            s3 = await self._s3()
            return await s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=seconds)
        except (ClientError, BotoCoreError) as exc:   # no credentials in the chain, typically
            raise StorageError(f"cannot presign {key!r}: {exc}") from exc

    async def apresign(self, key: str, seconds: int) -> str:
        """A GET URL for ``key`` that works for ``seconds`` (signing only; no request is made)."""
        return await self._await(self._presign(key, seconds))


def _content_type(key: str) -> str:
    if key.endswith((".m4s", ".mp4")):
        return "video/mp4"
    if key.endswith(".m3u8"):
        return "application/vnd.apple.mpegurl"
    return "application/octet-stream"
