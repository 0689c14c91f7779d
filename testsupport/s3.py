"""A real S3-compatible server on loopback for the bucket tests, and a gate in front of it.

``MotoServer`` runs moto's server mode (``python -m moto.server``) as a
child process bound to 127.0.0.1 on a free port: real HTTP, real SigV4
requests from aiobotocore, real ListObjectsV2/DeleteObjects/Range GETs.

``S3Gate`` is a loopback HTTP hop between the product and that server. It
forwards every request unchanged and adds two behaviours the tests need:
it can refuse writes for a while (``503 SlowDown``, what S3 answers when
it sheds load), and it applies the expiry rule of presigned URLs
(``X-Amz-Date`` + ``X-Amz-Expires``), which AWS S3, MinIO and R2 enforce
and moto does not.  It also counts what it forwarded and refused.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time
from collections import Counter

import aiohttp
from aiohttp import web

from .ports import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Never look for instance credentials (that would leave loopback) or a user's files.
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "server", "date"}


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **CREDENTIALS},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("moto server exited at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


class S3Gate:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.refuse_writes = False
        self.forwarded: Counter[str] = Counter()   # method -> count
        self.refused = 0
        self.expired = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_writes and request.method in ("PUT", "POST", "DELETE"):
            await request.read()
            self.refused += 1
            return _error(503, "SlowDown", "Please reduce your request rate.")
        query = request.rel_url.query
        if "X-Amz-Expires" in query and "X-Amz-Date" in query:
            signed = dt.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
            if dt.datetime.now(dt.timezone.utc) > signed + dt.timedelta(seconds=int(query["X-Amz-Expires"])):
                self.expired += 1
                return _error(403, "AccessDenied", "Request has expired")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
        assert self._session is not None
        async with self._session.request(request.method, self.upstream + str(request.rel_url), headers=headers,
                                         data=body or None, allow_redirects=False) as upstream:
            payload = await upstream.read()
            self.forwarded[request.method] += 1
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            if request.method == "HEAD" and "Content-Length" in upstream.headers:
                # A HEAD says the object's size in Content-Length; keep it.
                response = web.StreamResponse(status=upstream.status, headers=out)
                response.content_length = int(upstream.headers["Content-Length"])
                await response.prepare(request)
                await response.write_eof()
                return response
            return web.Response(status=upstream.status, body=payload, headers=out)


def _error(status: int, code: str, message: str) -> web.Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>")
    return web.Response(status=status, body=body.encode(), content_type="application/xml")
