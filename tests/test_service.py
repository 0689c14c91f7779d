"""The runnable service: health, readiness, metrics, migrations, errors."""

import asyncio

import asyncpg
import pytest

from odsmedia.storage import db as dbmod


async def test_healthz_and_readyz(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["checks"] == {"postgres": "ok", "redis": "ok"}
    assert resp.headers["X-Request-Id"]


async def test_readyz_names_redis_when_it_is_unreachable(aiohttp_client, service_urls, tmp_path):
    from conftest import make_config
    from odsmedia.app import make_app

    # A port nothing listens on: Redis "down" from the app's point of view.
    cfg = make_config(service_urls, tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
    client = await aiohttp_client(make_app(cfg))
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["down"] == ["redis"]
    assert body["checks"]["postgres"] == "ok"


async def test_metrics_exposition(client):
    await client.get("/healthz")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert 'ods_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert "process_cpu_seconds_total" in text


async def test_unknown_route_is_json_404(client):
    resp = await client.get("/no/such/thing")
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"


async def test_request_id_is_echoed(client):
    resp = await client.get("/healthz", headers={"X-Request-Id": "abc123"})
    assert resp.headers["X-Request-Id"] == "abc123"


async def test_concurrent_migrations_apply_once(service_urls, tmp_path):
    # Two runners at once against a fresh database: each file applied exactly once.
    name = "ods_mig_" + tmp_path.name[-8:].replace("-", "_").lower()
    admin = await asyncpg.connect(service_urls.admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        from conftest import _with_database

        dsn = _with_database(service_urls.admin_dsn, name)
        first, second = await asyncio.gather(dbmod.migrate(dsn), dbmod.migrate(dsn))
        expected = [n for _, n, _ in dbmod.migration_files()]
        assert sorted(first + second) == sorted(expected)
        assert not (set(first) & set(second))
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")
            assert [r["name"] for r in rows] == expected
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_failed_migration_rolls_back_whole(service_urls, tmp_path):
    name = "ods_migfail_" + tmp_path.name[-8:].replace("-", "_").lower()
    admin = await asyncpg.connect(service_urls.admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        from conftest import _with_database

        dsn = _with_database(service_urls.admin_dsn, name)
        mig = tmp_path / "migs"
        mig.mkdir()
        (mig / "0001_ok.sql").write_text("CREATE TABLE a (id int);")
        (mig / "0002_bad.sql").write_text("CREATE TABLE b (id int); SELECT no_such_function();")
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await dbmod.migrate(dsn, mig)
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT to_regclass('a') IS NOT NULL")
            assert await conn.fetchval("SELECT to_regclass('b') IS NULL")
            versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
            assert versions == [1]
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
