"""Shared fixtures: real PostgreSQL and Redis, one isolated namespace per run.

PostgreSQL and Redis on 127.0.0.1 are used when they answer (CI, developer
machines with services); otherwise the embedded servers are started under a
temporary directory.  Each run gets its own database (created, migrated,
dropped) and its own Redis key prefix (deleted at the end), so runs never see
each other's data.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as redis

from odsmedia import config as configmod
from odsmedia.app import make_app
from odsmedia.auth import tokens
from odsmedia.rooms import directory
from odsmedia.storage import migrate
from testsupport.peers import Peers

REPO = Path(__file__).resolve().parent.parent
LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class ServiceUrls:
    admin_dsn: str
    database_url: str
    redis_url: str
    prefix: str


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _with_database(dsn: str, name: str) -> str:
    base, _, query = dsn.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return base + ("?" + query if query else "")


@pytest.fixture(scope="session")
def service_urls(tmp_path_factory) -> ServiceUrls:
    embedded = None
    admin_dsn = os.environ.get("ODS_TEST_DATABASE_URL", "")
    redis_url = os.environ.get("ODS_TEST_REDIS_URL", "")
    if not admin_dsn and _port_open("127.0.0.1", 5432):
        admin_dsn = LOCAL_PG
    if not redis_url and _port_open("127.0.0.1", 6379):
        redis_url = LOCAL_REDIS
    if not admin_dsn or not redis_url:
        from odsmedia.embedded import EmbeddedServices

        embedded = EmbeddedServices(tmp_path_factory.mktemp("services"))
        if not admin_dsn:
            admin_dsn = embedded.start_postgres()
        if not redis_url:
            redis_url = embedded.start_redis()
    run = uuid.uuid4().hex[:10]
    dbname = f"ods_test_{run}"
    database_url = _with_database(admin_dsn, dbname)

    async def create() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{dbname}"')
        finally:
            await conn.close()
        await migrate(database_url)

    asyncio.run(create())
    urls = ServiceUrls(admin_dsn, database_url, redis_url, f"odstest:{run}:")
    yield urls

    async def drop() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        finally:
            await conn.close()
        client = redis.from_url(redis_url)
        try:
            keys = [k async for k in client.scan_iter(match=urls.prefix + "*", count=500)]
            if keys:
                await client.delete(*keys)
        except Exception:
            pass  # a test may have stopped this Redis on purpose
        finally:
            await client.aclose()

    asyncio.run(drop())
    if embedded is not None:
        embedded.stop()


def make_config(service_urls: ServiceUrls, data_dir: Path, **overrides: str) -> configmod.Config:
    env = {
        "DATABASE_URL": service_urls.database_url,
        "REDIS_URL": service_urls.redis_url,
        "ODS_REDIS_PREFIX": service_urls.prefix,
        "ODS_DATA_DIR": str(data_dir),
        "ODS_ICE_ADDRESSES": "127.0.0.1",
        "ODS_SECRET_KEY": "test-secret-key-0123456789-abcdefghijklmnop",
        "ODS_HTTP_PORT": "0",
        "ODS_LOG_FORMAT": "text",
        # Apps in one test process all read that process's CPU, so a busy test run would make
        # every in-process node "full" or "busy" at random and redirect joins; CPU placement is
        # tested with real processes (test_workers) and as a pure policy (test_placement_policy).
        "ODS_ROOMS_RELAY_CPU_PERCENT": "100000",
        "ODS_ROOMS_FULL_CPU_PERCENT": "100000",
    }
    env.update(overrides)
    return configmod.load(environ=env, dev=True)


@pytest.fixture
def config(service_urls: ServiceUrls, tmp_path: Path) -> configmod.Config:
    return make_config(service_urls, tmp_path / "data")


@pytest.fixture
async def db(service_urls: ServiceUrls) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(service_urls.database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def client(aiohttp_client, config):
    """An aiohttp test client on a real loopback socket, against the full app."""
    return await aiohttp_client(make_app(config))


async def refusal(request) -> tuple[int, str | None]:
    """(HTTP status, the JSON body's machine-readable ``error``) of an aiohttp client request:
    what a refusal is asserted by (None when the body is not JSON or names no error)."""
    resp = await request
    body = await resp.json() if resp.content_type == "application/json" else {}
    return resp.status, body.get("error") if isinstance(body, dict) else None


def unique_slug(prefix: str = "room") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def room_factory(db):
    async def create(policy: str = "public", plans: tuple[str, ...] = (), title: str = "Test room", owner_id=None):
        return await directory.create(db, unique_slug(), title=title, policy=policy, plans=plans, owner_id=owner_id)

    return create


@pytest.fixture
def token_factory(db):
    async def mint(room, role: str = "host", ttl: float = 3600, account_id: int | None = None) -> str:
        token, _ = await tokens.mint(db, room_id=room.id, role=role, ttl_seconds=ttl, account_id=account_id)
        return token

    return mint


@pytest.fixture
async def peers(token_factory) -> AsyncIterator[Peers]:
    """Signaling clients, publishers and viewers for this test (testsupport.peers.Peers),
    all closed when it ends.  Ask for ``client`` first, so they close before the server."""
    group = Peers(token_factory)
    yield group
    await group.close()


def odsmedia_env(service_urls: ServiceUrls, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for running the `odsmedia` CLI as a subprocess against the test services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ODS_", "DATABASE_URL", "REDIS_URL"))}
    env.update(
        DATABASE_URL=service_urls.database_url,
        REDIS_URL=service_urls.redis_url,
        ODS_REDIS_PREFIX=service_urls.prefix,
        ODS_DATA_DIR=str(data_dir),
        ODS_ICE_ADDRESSES="127.0.0.1",
        ODS_SECRET_KEY="test-secret-key-0123456789-abcdefghijklmnop",
        # `serve` uses the outbox only when it is asked for.
        ODS_MAIL_BACKEND="outbox",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


ODSMEDIA = [sys.executable, "-m", "odsmedia"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
]


@pytest.fixture
async def browser():
    """Headless Debian Chromium through Playwright. Missing Chromium fails, never skips, in CI."""
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is missing at /usr/bin/chromium; scripts/test installs it (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
